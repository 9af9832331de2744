{{/*
One PyTorchJob replica spec (Master or Worker). Layout only: every value - the entrypoint script, env,
resources, run policy - is computed by gemma3-launch's plan and arrives through .Values.
Mirrors launcher/gemma3_launch/render_k8s.py; tests/k8s check that both give the same PyTorchJob.
*/}}
{{- define "gemma3-launch.replica" -}}
{{- $v := .root.Values -}}
replicas: {{ .replicas }}
restartPolicy: ExitCode
template:
  metadata:
    labels:
      app.kubernetes.io/name: gemma3-launch
      gemma3-launch/job-id: {{ $v.job.name | toJson }}
      gemma3-launch/role: {{ .role }}
  spec:
    containers:
      - name: pytorch
        image: {{ $v.image | toJson }}
        imagePullPolicy: {{ $v.imagePullPolicy | toJson }}
        command: {{- toYaml $v.command | nindent 10 }}
        env:
          {{- with $v.env }}{{ toYaml . | nindent 10 }}{{ end }}
          {{- range $v.secrets.names }}
          - name: {{ . | toJson }}
            valueFrom:
              secretKeyRef:
                name: {{ $v.secrets.secretName | toJson }}
                key: {{ . | toJson }}
          {{- end }}
        ports:
          - name: pytorchjob-port
            containerPort: 23456
            protocol: TCP
        resources: {{- toYaml $v.resources | nindent 10 }}
        volumeMounts:
          - name: dshm
            mountPath: /dev/shm
          {{- range $i, $pvc := $v.pvcs }}
          - name: pvc-{{ $i }}
            mountPath: {{ $pvc.mountPath | toJson }}
            readOnly: {{ $pvc.readOnly }}
          {{- end }}
          {{- range $i, $mount := $v.hostMounts }}
          - name: host-{{ $i }}
            mountPath: {{ $mount.mountPath | toJson }}
            readOnly: {{ $mount.readOnly }}
          {{- end }}
    volumes:
      - name: dshm
        emptyDir:
          medium: Memory
          sizeLimit: {{ $v.shmSize | toJson }}
      {{- range $i, $pvc := $v.pvcs }}
      - name: pvc-{{ $i }}
        persistentVolumeClaim:
          claimName: {{ $pvc.claim | toJson }}
          readOnly: {{ $pvc.readOnly }}
      {{- end }}
      {{- range $i, $mount := $v.hostMounts }}
      - name: host-{{ $i }}
        hostPath:
          path: {{ $mount.path | toJson }}
          type: Directory
      {{- end }}
    {{- with $v.nodeSelector }}
    nodeSelector: {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $v.tolerations }}
    tolerations: {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $v.priorityClassName }}
    priorityClassName: {{ . | toJson }}
    {{- end }}
    {{- with $v.serviceAccountName }}
    serviceAccountName: {{ . | toJson }}
    {{- end }}
{{- end }}

{{/*
Layout only: every value - the entrypoint script, env, resources, restart rules - is computed by gemma3-launch's
plan and arrives through .Values. Mirrors launcher/gemma3_launch/render_k8s.py and render_trainjob.py; tests/k8s
check that the chart and the launcher give the same objects for every job spec, apart from the labels below.
*/}}

{{/* Helm's recommended labels, on every object this chart creates. */}}
{{- define "gemma3-launch.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | toJson }}
app.kubernetes.io/instance: {{ .Release.Name | toJson }}
app.kubernetes.io/version: {{ .Chart.AppVersion | toJson }}
app.kubernetes.io/managed-by: {{ .Release.Service | toJson }}
{{- end }}

{{/* The job object's labels (render_k8s.job_labels); `queue` false leaves Kueue's label out (the runtime). */}}
{{- define "gemma3-launch.jobLabels" -}}
{{- $v := .root.Values -}}
{{- with $v.labels }}{{ toYaml . }}
{{ end -}}
app.kubernetes.io/name: gemma3-launch
gemma3-launch/job-id: {{ $v.job.name | toJson }}
gemma3-launch/kind: {{ $v.job.kind | toJson }}
{{- if and .queue $v.job.queue }}
kueue.x-k8s.io/queue-name: {{ $v.job.queue | toJson }}
{{- end }}
{{ include "gemma3-launch.helmLabels" .root }}
{{- end }}

{{- define "gemma3-launch.annotations" -}}
{{- $v := .Values -}}
{{- with $v.annotations }}{{ toYaml . }}
{{ end -}}
gemma3-launch/spec-hash: {{ $v.job.specHash | toJson }}
gemma3-launch/run-dir: {{ $v.job.runDir | toJson }}
{{- end }}

{{/* Pod labels (render_k8s.pod_labels). */}}
{{- define "gemma3-launch.podLabels" -}}
{{- $v := .root.Values -}}
{{- with $v.labels }}{{ toYaml . }}
{{ end -}}
app.kubernetes.io/name: gemma3-launch
gemma3-launch/job-id: {{ $v.job.name | toJson }}
{{- with .role }}
gemma3-launch/role: {{ . }}
{{- end }}
{{- end }}

{{- define "gemma3-launch.env" -}}
{{- $v := .Values -}}
{{- with $v.env }}{{ toYaml . }}{{ end }}
{{- range $v.secrets.names }}
- name: {{ . | toJson }}
  valueFrom:
    secretKeyRef:
      name: {{ $v.secrets.secretName | toJson }}
      key: {{ . | toJson }}
{{- end }}
{{- end }}

{{- define "gemma3-launch.volumeMounts" -}}
- name: dshm
  mountPath: /dev/shm
{{- range $i, $pvc := .Values.pvcs }}
- name: pvc-{{ $i }}
  mountPath: {{ $pvc.mountPath | toJson }}
  readOnly: {{ $pvc.readOnly }}
{{- end }}
{{- range $i, $mount := .Values.hostMounts }}
- name: host-{{ $i }}
  mountPath: {{ $mount.mountPath | toJson }}
  readOnly: {{ $mount.readOnly }}
{{- end }}
{{- end }}

{{/* volumes and the scheduling fields of the pod spec (render_k8s.volumes, pod_scheduling). */}}
{{- define "gemma3-launch.podVolumesAndScheduling" -}}
{{- $v := .Values -}}
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
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . | toJson }}
{{- end }}
{{- with $v.serviceAccountName }}
serviceAccountName: {{ . | toJson }}
{{- end }}
{{- end }}

{{/* One PyTorchJob replica spec (Master or Worker). */}}
{{- define "gemma3-launch.replica" -}}
{{- $v := .root.Values -}}
replicas: {{ .replicas }}
restartPolicy: ExitCode
template:
  metadata:
    labels: {{- include "gemma3-launch.podLabels" . | nindent 6 }}
  spec:
    containers:
      - name: pytorch
        image: {{ $v.image | toJson }}
        imagePullPolicy: {{ $v.imagePullPolicy | toJson }}
        command: {{- toYaml $v.command | nindent 10 }}
        env: {{- include "gemma3-launch.env" .root | nindent 10 }}
        ports:
          - name: pytorchjob-port
            containerPort: 23456
            protocol: TCP
        resources: {{- toYaml $v.resources | nindent 10 }}
        volumeMounts: {{- include "gemma3-launch.volumeMounts" .root | nindent 10 }}
    {{- include "gemma3-launch.podVolumesAndScheduling" .root | nindent 4 }}
{{- end }}

{{- define "gemma3-launch.secretCheck" -}}
{{- if and .Values.secrets.names (not .Values.secrets.secretName) }}
{{- fail "secrets.secretName: expected the Kubernetes Secret that holds secrets.names (values never go into values)" }}
{{- end }}
{{- end }}

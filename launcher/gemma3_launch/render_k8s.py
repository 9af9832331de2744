"""JobPlan -> Kubeflow PyTorchJob (kubeflow.org/v1) manifest, as a plain dict. Pure: no cluster, no files.

This is the only place that knows the PyTorchJob layout. The k8s backend submits exactly this dict, `render
--cluster k8s` prints it, and the Helm chart is a thin template over `helm_values(plan)` whose output tests
compare with this function's for every spec in jobspecs/.

Decisions the plan leaves to the backend (each is explicit in the manifest, because operator defaults surprise):
- cleanPodPolicy Running: when the job ends, pods still running (a hung worker after the master failed) are
  deleted and free their GPUs, while finished pods stay so `logs` works until ttlSecondsAfterFinished.
- activeDeadlineSeconds = the spec's time limit; restartPolicy ExitCode on every replica: exit codes 128-255
  (REQUEUE_EXIT_CODE, or a kill by signal) restart the pod and the runtime resumes from its checkpoint, 1-127
  are real failures and fail the job.
- a Kueue queue label makes the job start suspended: Kueue un-suspends it on admission.
- spec mounts (paths that exist on every node, e.g. a parallel file system) become hostPath volumes; PVCs are
  the Kubernetes-native storage (k8s.pvcs) and win: a spec mount whose target a PVC already mounts is dropped
  (specs list both so one file serves SLURM and Kubernetes; a pod cannot mount two volumes at one path).
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import yaml

from .contract import REQUEUE_EXIT_CODE
from .plan import JobPlan
from .record import PLAN_FILE

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
#: The training operator finds the training container by this name.
CONTAINER_NAME = "pytorch"
#: The operator's default rendezvous port; declared so MASTER_PORT is what we expect.
MASTER_PORT = 23456
CLEAN_POD_POLICY = "Running"
RESTART_POLICY = "ExitCode"
GPU_RESOURCE = "nvidia.com/gpu"

LABEL_APP = "app.kubernetes.io/name"
LABEL_JOB_ID = "gemma3-launch/job-id"
LABEL_KIND = "gemma3-launch/kind"
LABEL_ROLE = "gemma3-launch/role"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
ANNOTATION_SPEC_HASH = "gemma3-launch/spec-hash"
ANNOTATION_RUN_DIR = "gemma3-launch/run-dir"


class K8sRenderError(ValueError):
    """The plan cannot become a PyTorchJob; `str()` is one line naming the spec field (-> exit 2)."""


def render_pytorchjob(plan: JobPlan) -> dict[str, Any]:
    """The PyTorchJob that `gemma3-launch submit --cluster k8s` creates for `plan`."""
    if plan.secrets and not plan.k8s.secret_name:
        raise K8sRenderError(
            f"k8s.secret_name: expected the name of the Kubernetes Secret holding {', '.join(plan.secrets)} "
            "(secrets reach pods only through secretKeyRef)"
        )
    labels = {LABEL_APP: "gemma3-launch", LABEL_JOB_ID: plan.job_id, LABEL_KIND: plan.kind}
    if plan.k8s.queue:
        labels[LABEL_KUEUE_QUEUE] = plan.k8s.queue
    replica_specs = {"Master": _replica_spec(plan, "master", 1)}
    if plan.resources.nodes > 1:
        replica_specs["Worker"] = _replica_spec(plan, "worker", plan.resources.nodes - 1)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": plan.job_id,
            "namespace": plan.k8s.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_SPEC_HASH: plan.spec_hash, ANNOTATION_RUN_DIR: plan.run_dir},
        },
        "spec": {
            "nprocPerNode": str(plan.resources.nproc_per_node),
            "runPolicy": {
                "backoffLimit": plan.k8s.backoff_limit,
                "cleanPodPolicy": CLEAN_POD_POLICY,
                "ttlSecondsAfterFinished": plan.k8s.ttl_seconds_after_finished,
                "activeDeadlineSeconds": plan.resources.time_limit_s,
                "suspend": bool(plan.k8s.queue),
            },
            "pytorchReplicaSpecs": replica_specs,
        },
    }


def _replica_spec(plan: JobPlan, role: str, replicas: int) -> dict[str, Any]:
    pod_labels = {LABEL_APP: "gemma3-launch", LABEL_JOB_ID: plan.job_id, LABEL_ROLE: role}
    pod_spec: dict[str, Any] = {
        "containers": [_container(plan)],
        "volumes": _volumes(plan),
    }
    if plan.k8s.node_selector:
        pod_spec["nodeSelector"] = dict(plan.k8s.node_selector)
    if plan.k8s.tolerations:
        pod_spec["tolerations"] = [_toleration(t) for t in plan.k8s.tolerations]
    if plan.k8s.priority_class:
        pod_spec["priorityClassName"] = plan.k8s.priority_class
    if plan.k8s.service_account:
        pod_spec["serviceAccountName"] = plan.k8s.service_account
    return {
        "replicas": replicas,
        "restartPolicy": RESTART_POLICY,
        "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
    }


def _container(plan: JobPlan) -> dict[str, Any]:
    env: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in plan.env.items()]
    env += [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": plan.k8s.secret_name, "key": name}}}
        for name in plan.secrets
    ]
    return {
        "name": CONTAINER_NAME,
        "image": plan.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/bash", "-c", entrypoint_script(plan)],
        "env": env,
        "ports": [{"name": "pytorchjob-port", "containerPort": MASTER_PORT, "protocol": "TCP"}],
        "resources": _resources(plan),
        "volumeMounts": _volume_mounts(plan),
    }


def _resources(plan: JobPlan) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": str(plan.resources.cpus_per_task)}
    limits: dict[str, Any] = {}
    if plan.resources.memory:
        requests["memory"] = limits["memory"] = kubernetes_quantity(plan.resources.memory)
    if plan.resources.gpus_per_node:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = plan.resources.gpus_per_node
    return {"requests": requests, "limits": limits} if limits else {"requests": requests}


def kubernetes_quantity(slurm_memory: str) -> str:
    """'64G' (the spec's SLURM-style binary units) -> '64Gi'."""
    match = re.fullmatch(r"([1-9][0-9]*)([KMGT])", slurm_memory)
    if not match:
        raise K8sRenderError(f"resources.memory: expected a size such as '64G', got {slurm_memory!r}")
    return f"{match.group(1)}{match.group(2)}i" if match.group(2) != "K" else f"{match.group(1)}Ki"


def _toleration(toleration: Any) -> dict[str, Any]:
    out = {"operator": toleration.operator}
    for key in ("key", "value", "effect"):
        if getattr(toleration, key) is not None:
            out[key] = getattr(toleration, key)
    return out


def _volumes(plan: JobPlan) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": plan.k8s.shm_size}}]
    volumes += [
        {"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": pvc.claim, "readOnly": pvc.read_only}}
        for i, pvc in enumerate(plan.k8s.pvcs)
    ]
    volumes += [
        {"name": f"host-{i}", "hostPath": {"path": mount.source, "type": "Directory"}}
        for i, mount in enumerate(_host_mounts(plan))
    ]
    return volumes


def _host_mounts(plan: JobPlan) -> list[Any]:
    """The spec's mounts that no PVC shadows."""
    pvc_paths = {pvc.mount_path.rstrip("/") for pvc in plan.k8s.pvcs}
    return [mount for mount in plan.mounts if mount.target.rstrip("/") not in pvc_paths]


def _volume_mounts(plan: JobPlan) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    mounts += [
        {"name": f"pvc-{i}", "mountPath": pvc.mount_path, "readOnly": pvc.read_only}
        for i, pvc in enumerate(plan.k8s.pvcs)
    ]
    mounts += [
        {"name": f"host-{i}", "mountPath": mount.target, "readOnly": mount.read_only}
        for i, mount in enumerate(_host_mounts(plan))
    ]
    return mounts


class _ReadableDumper(yaml.SafeDumper):
    """Multi-line strings (the entrypoint script) as `|` blocks, so `render` output is reviewable."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and not any(c in value for c in "\t\r") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ReadableDumper.add_representer(str, _represent_str)


def dump_yaml(document: Any) -> str:
    return yaml.dump(document, Dumper=_ReadableDumper, sort_keys=False, width=120, default_flow_style=False)


def render_pytorchjob_yaml(plan: JobPlan) -> str:
    """What `render --cluster k8s` prints: exactly the object `submit --cluster k8s` creates."""
    return dump_yaml(render_pytorchjob(plan))


# ---------------------------------------------------------------------------------------------------------------
# The container's entrypoint: identical on every pod. It writes the plan into the run directory and hands over to
# the job wrapper (gemma3_launch.jobwrap), the same one the local and SLURM backends run: it records job.json,
# redacts secret values from the output, skips steps already done after a restart and turns "the workers saved
# after SIGTERM" into REQUEUE_EXIT_CODE (torchrun itself reports any worker failure as 1).

#: ends the here-document that carries plan.json (JSON lines never equal it: they start with a space or brace)
_HEREDOC = "GEMMA3_LAUNCH_PLAN"

_PRELUDE = """\
set -uo pipefail
# The operator numbers pods Master 0, Worker 1..: that is the node rank the job wrapper gives torchrun.
export GEMMA3_NODE_RANK="${RANK:-0}"
# The plan travels inside the manifest (no secret values in it: secrets are names); every pod writes its copy,
# atomically, so a run directory on a shared PVC sees one complete plan.json.
mkdir -p "$RUN_DIR"
"""

_MASTER = f"""\
# Master (RANK 0): the whole job, step by step; exit {REQUEUE_EXIT_CODE} asks restartPolicy ExitCode for a restart.
if [ "${{RANK:-0}}" = 0 ]; then exec python3 -m gemma3_launch.jobwrap job "$RUN_DIR"; fi
"""

_WORKER = (
    """\
# Workers: only the steps that span several nodes. They join once the master's torchrun listens, because the
# master may first run single-process steps (import, generate) for longer than torchrun's rendezvous timeout.
child=""; term=0
trap 'term=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM
node_step() {
  until (exec 3<>"/dev/tcp/${MASTER_ADDR}/${MASTER_PORT}") 2>/dev/null; do
    [ "$term" = 0 ] || exit 143
    sleep 2
  done
  python3 -m gemma3_launch.jobwrap node "$RUN_DIR" "$1" & child=$!
  [ "$term" = 0 ] || kill -TERM "$child" 2>/dev/null  # a SIGTERM that came before $child was known
  local rc again
  while :; do  # a trapped signal interrupts `wait`: wait again for the step's own exit code
    wait "$child"; rc=$?
    kill -0 "$child" 2>/dev/null && continue
    wait "$child" 2>/dev/null; again=$?
    [ "$again" -eq 127 ] || rc=$again  # 127: already collected by the first wait
    break
  done
  child=""
  [ "$rc" -eq 0 ] && return 0
  # The master restarting (it saved after a preemption and exited REQUEUE_EXIT_CODE) breaks this node's
  # rendezvous: restart this pod too so it rejoins, instead of failing the job. A master that failed for good
  # fails the job, and cleanPodPolicy Running then removes this pod.
  if [ "$term" = 0 ] && ! (exec 3<>"/dev/tcp/${MASTER_ADDR}/${MASTER_PORT}") 2>/dev/null; then
    echo "[gemma3-launch] the master went away (exit $rc here): restarting to rejoin" >&2
    exit %d
  fi
  exit "$rc"
}
"""
    % REQUEUE_EXIT_CODE
)


def entrypoint_script(plan: JobPlan) -> str:
    """Bash run by every pod (PID 1): write plan.json, then the job wrapper (master) or the multi-node steps
    (workers, only when the job spans several nodes)."""
    plan_json = json.dumps(plan.to_dict(), indent=1)
    parts = [
        f"RUN_DIR={shlex.quote(plan.run_dir)}\n",
        _PRELUDE,
        f"cat > \"$RUN_DIR/.{PLAN_FILE}.$HOSTNAME\" <<'{_HEREDOC}'\n{plan_json}\n{_HEREDOC}\n",
        f'mv -f "$RUN_DIR/.{PLAN_FILE}.$HOSTNAME" "$RUN_DIR/{PLAN_FILE}"\n',
        _MASTER,
    ]
    multi_node = [index for index, step in enumerate(plan.steps) if step.nnodes > 1]
    if multi_node:
        parts.append(_WORKER)
        parts += [f"node_step {index}  # {plan.steps[index].name}\n" for index in multi_node]
    return "".join(parts)

"""JobPlan -> Kubernetes objects, as plain dicts. Pure: no cluster, no files.

`render_objects(plan)` is what `submit --cluster k8s` creates and `render --cluster k8s` prints: by default a
Kubeflow Trainer v2 TrainJob plus the TrainingRuntime it references (render_trainjob.py), with `k8s.api:
pytorchjob` a Training Operator v1 PyTorchJob (below). Both are laid out from the same pod pieces defined here
(container command, env, resources, volumes, scheduling), so the two APIs cannot drift apart, and the Helm chart
is a thin template over `render_helm.helm_values(plan)`, compared with these functions for every spec in jobspecs/.

PyTorchJob decisions (each explicit in the manifest, because operator defaults surprise):
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

import posixpath
import re
from typing import Any

import yaml

from .k8s_entrypoint import entrypoint_script
from .plan import JobPlan
from .quoting import UnsafeValueError, k8s_command_word

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
#: The training operator finds the training container by this name.
CONTAINER_NAME = "pytorch"
#: The operator's default rendezvous port; declared so MASTER_PORT is what we expect.
MASTER_PORT = 23456
CLEAN_POD_POLICY = "Running"
RESTART_POLICY = "ExitCode"
GPU_RESOURCE = "nvidia.com/gpu"
SHM_PATH = "/dev/shm"
#: The longest DNS label (pod host names, Service names, label values).
DNS_LABEL_MAX = 63

LABEL_APP = "app.kubernetes.io/name"
LABEL_JOB_ID = "gemma3-launch/job-id"
LABEL_KIND = "gemma3-launch/kind"
LABEL_ROLE = "gemma3-launch/role"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
ANNOTATION_SPEC_HASH = "gemma3-launch/spec-hash"
ANNOTATION_RUN_DIR = "gemma3-launch/run-dir"
APP_NAME = "gemma3-launch"


class K8sRenderError(ValueError):
    """The plan cannot become a Kubernetes job; `str()` is one line naming the spec field (-> exit 2)."""


# ---- checks the API server or the operator would make, made here first ------------------------------------------
def check_plan(plan: JobPlan) -> None:
    """Everything that is valid on its own in the spec but not as this plan's Kubernetes objects."""
    if plan.secrets and not plan.k8s.secret_name:
        raise K8sRenderError(
            f"k8s.secret_name: expected the name of the Kubernetes Secret holding {', '.join(plan.secrets)} "
            "(secrets reach pods only through secretKeyRef)"
        )
    pvc_paths = {pvc.mount_path.rstrip("/") for pvc in plan.k8s.pvcs}
    seen: set[str] = set()
    for index, mount in enumerate(plan.mounts):
        target = mount.target.rstrip("/") or "/"
        if target == SHM_PATH:
            raise K8sRenderError(f"mounts[{index}].target: expected a path other than {SHM_PATH} (the pod's shm)")
        if target in seen and target not in pvc_paths:
            raise K8sRenderError(f"mounts[{index}].target: expected each mount path once, {target} is mounted twice")
        seen.add(target)
    check_derived_names(plan)


def derived_names(api: str, job_id: str, nodes: int) -> list[str]:
    """The DNS labels the operator derives from the job's name: the longest pod host name and Service name."""
    if api == "pytorchjob":  # pods and their Services: <name>-master-0, <name>-worker-<i>
        return [f"{job_id}-master-0"] + ([f"{job_id}-worker-{nodes - 2}"] if nodes > 1 else [])
    # TrainJob -> JobSet <name> (also the headless Service) -> Job <name>-node-0 -> pod host <name>-node-0-<i>
    return [job_id, f"{job_id}-node-0", f"{job_id}-node-0-{nodes - 1}"]


def check_derived_names(plan: JobPlan) -> None:
    """The job's name, and every name the operator derives from it, must be a DNS-1035 label. Checked for the
    longest job id `submit` can give this spec (`<name>-<yyyymmdd-hhmmss>-<4 hex>`), so `validate` and `render`
    refuse a name that only `submit` would have found too long."""
    from .job_ids import new_job_id  # the one place job ids are made

    longest = max(plan.job_id, new_job_id(plan.job_name), key=len)
    for derived in derived_names(plan.k8s.api, longest, plan.resources.nodes):
        if len(derived) > DNS_LABEL_MAX:
            budget = len(plan.job_name) - (len(derived) - DNS_LABEL_MAX)
            raise K8sRenderError(
                f"name: expected at most {max(budget, 1)} characters for a {plan.resources.nodes}-node "
                f"{plan.k8s.api}: the operator derives '{derived}' from the job id, longer than {DNS_LABEL_MAX}"
            )


def run_dir_problem(plan: JobPlan) -> str | None:
    """Why the run dir would not survive a pod restart (it must lie on a writable persistent mount), or None."""
    writable = [pvc.mount_path for pvc in plan.k8s.pvcs if not pvc.read_only]
    writable += [mount.target for mount in host_mounts(plan) if not mount.read_only]
    run_dir = posixpath.normpath(plan.run_dir)
    if plan.run_dir.startswith("/") and any(
        run_dir == root.rstrip("/") or run_dir.startswith(root.rstrip("/") + "/") for root in writable
    ):
        return None
    return (
        "runs_dir: expected an absolute directory under a writable k8s.pvcs mount_path (or a writable mount), so a "
        "restarted pod finds the steps it finished (--ephemeral-run-dir-ok: submit anyway)"
    )


# ---- pod pieces shared by both APIs ------------------------------------------------------------------------------
def job_labels(plan: JobPlan) -> dict[str, str]:
    labels = {**plan.k8s.labels, LABEL_APP: APP_NAME, LABEL_JOB_ID: plan.job_id, LABEL_KIND: plan.kind}
    if plan.k8s.queue:
        labels[LABEL_KUEUE_QUEUE] = plan.k8s.queue
    return labels


def job_annotations(plan: JobPlan) -> dict[str, str]:
    return {**plan.k8s.annotations, ANNOTATION_SPEC_HASH: plan.spec_hash, ANNOTATION_RUN_DIR: plan.run_dir}


def pod_labels(plan: JobPlan, role: str | None = None) -> dict[str, str]:
    labels = {**plan.k8s.labels, LABEL_APP: APP_NAME, LABEL_JOB_ID: plan.job_id}
    if role:
        labels[LABEL_ROLE] = role
    return labels


def container_command(plan: JobPlan, api: str) -> list[str]:
    """The container's command: every word through quoting.k8s_command_word (the kubelet expands `$(VAR)`)."""
    return ["/bin/bash", "-c", k8s_command_word(entrypoint_script(plan, api), script=True)]


def container_env(plan: JobPlan) -> list[dict[str, Any]]:
    """Plain values through quoting.k8s_command_word too: the kubelet expands `$(VAR)` in env values as well."""
    env: list[dict[str, Any]] = []
    for name, value in plan.env.items():
        try:
            env.append({"name": name, "value": k8s_command_word(value)})
        except UnsafeValueError:
            raise K8sRenderError(f"env.{name}: expected a value without control characters") from None
    env += [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": plan.k8s.secret_name, "key": name}}}
        for name in plan.secrets
    ]
    return env


def resources(plan: JobPlan) -> dict[str, Any]:
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
        raise K8sRenderError("resources.memory: expected a size such as '64G'")
    return f"{match.group(1)}{match.group(2)}i" if match.group(2) != "K" else f"{match.group(1)}Ki"


def pod_scheduling(plan: JobPlan) -> dict[str, Any]:
    """nodeSelector, tolerations, priorityClassName, serviceAccountName: only those the spec sets."""
    out: dict[str, Any] = {}
    if plan.k8s.node_selector:
        out["nodeSelector"] = dict(plan.k8s.node_selector)
    if plan.k8s.tolerations:
        out["tolerations"] = [_toleration(t) for t in plan.k8s.tolerations]
    if plan.k8s.priority_class:
        out["priorityClassName"] = plan.k8s.priority_class
    if plan.k8s.service_account:
        out["serviceAccountName"] = plan.k8s.service_account
    return out


def _toleration(toleration: Any) -> dict[str, Any]:
    out = {"operator": toleration.operator}
    for key in ("key", "value", "effect"):
        if getattr(toleration, key) is not None:
            out[key] = getattr(toleration, key)
    return out


def volumes(plan: JobPlan) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": plan.k8s.shm_size}}]
    out += [
        {"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": pvc.claim, "readOnly": pvc.read_only}}
        for i, pvc in enumerate(plan.k8s.pvcs)
    ]
    out += [
        {"name": f"host-{i}", "hostPath": {"path": mount.source, "type": "Directory"}}
        for i, mount in enumerate(host_mounts(plan))
    ]
    return out


def host_mounts(plan: JobPlan) -> list[Any]:
    """The spec's mounts that no PVC shadows."""
    pvc_paths = {pvc.mount_path.rstrip("/") for pvc in plan.k8s.pvcs}
    return [mount for mount in plan.mounts if mount.target.rstrip("/") not in pvc_paths]


def volume_mounts(plan: JobPlan) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"name": "dshm", "mountPath": SHM_PATH}]
    out += [
        {"name": f"pvc-{i}", "mountPath": pvc.mount_path, "readOnly": pvc.read_only}
        for i, pvc in enumerate(plan.k8s.pvcs)
    ]
    out += [
        {"name": f"host-{i}", "mountPath": mount.target, "readOnly": mount.read_only}
        for i, mount in enumerate(host_mounts(plan))
    ]
    return out


# ---- PyTorchJob (Training Operator v1) ---------------------------------------------------------------------------
def render_pytorchjob(plan: JobPlan) -> dict[str, Any]:
    """The PyTorchJob that `submit --cluster k8s` creates for `plan` when `k8s.api: pytorchjob`."""
    check_plan(plan)
    replica_specs = {"Master": _replica_spec(plan, "master", 1)}
    if plan.resources.nodes > 1:
        replica_specs["Worker"] = _replica_spec(plan, "worker", plan.resources.nodes - 1)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": plan.job_id,
            "namespace": plan.k8s.namespace,
            "labels": job_labels(plan),
            "annotations": job_annotations(plan),
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
    container = {
        "name": CONTAINER_NAME,
        "image": plan.image,
        "imagePullPolicy": "IfNotPresent",
        "command": container_command(plan, "pytorchjob"),
        "env": container_env(plan),
        "ports": [{"name": "pytorchjob-port", "containerPort": MASTER_PORT, "protocol": "TCP"}],
        "resources": resources(plan),
        "volumeMounts": volume_mounts(plan),
    }
    pod_spec: dict[str, Any] = {"containers": [container], "volumes": volumes(plan), **pod_scheduling(plan)}
    return {
        "replicas": replicas,
        "restartPolicy": RESTART_POLICY,
        "template": {"metadata": {"labels": pod_labels(plan, role)}, "spec": pod_spec},
    }


# ---- both APIs ---------------------------------------------------------------------------------------------------
class ReadableDumper(yaml.SafeDumper):
    """Multi-line strings (the entrypoint script) as `|` blocks, so `render` output is reviewable."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and not any(c in value for c in "\t\r") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


ReadableDumper.add_representer(str, _represent_str)


def dump_yaml(document: Any) -> str:
    return yaml.dump(document, Dumper=ReadableDumper, sort_keys=False, width=120, default_flow_style=False)

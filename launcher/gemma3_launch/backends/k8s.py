"""Kubernetes backend: the plan as a Kubeflow Trainer v2 TrainJob (+ its TrainingRuntime), or with `k8s.api:
pytorchjob` a Training Operator v1 PyTorchJob, through the plain `kubernetes` Python client.

submit creates exactly k8s_manifests.render_objects(plan), in order. status reads the job object (the operator's word,
not the pods'): a TrainJob is RUNNING while its child Job is active and ready, REQUEUED after its JobSet restarted
and before the new attempt is ready, COMPLETED / FAILED from its conditions; a failed job's exit code comes from
the run dir's state file or the node-0 pod's terminated container. logs streams node 0's container, selected by the
labels JobSet and the Job controller put on every pod; cancel deletes the job with background propagation (the
JobSet, Jobs and pods follow through owner references) and a per-job TrainingRuntime with it. Cluster access:
$KUBECONFIG / ~/.kube/config (current context), else the in-cluster service account. The backend id is
`<namespace>/<name>`; the API (trainjob | pytorchjob) is the record's spec.k8s.api.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ..k8s_manifests import render_objects, render_yaml
from ..plan import JobPlan
from ..record import add_state, read_terminal_state, update_record
from ..render_k8s import K8sRenderError
from . import BackendError
from ._k8s_api import call, core_api, explain, plural

REQUEST_TIMEOUT_S = 30
ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED")
#: PyTorchJob condition type (status True) -> our state; terminal conditions win over the others.
_PYTORCHJOB_TERMINAL = {"Succeeded": "COMPLETED", "Failed": "FAILED"}
_PYTORCHJOB_ACTIVE = {"Suspended": "SUSPENDED", "Restarting": "REQUEUED", "Running": "RUNNING", "Created": "PENDING"}
#: TrainJob conditions (trainer.kubeflow.org/v1alpha1: Complete, Failed, Suspended, Created).
_TRAINJOB_TERMINAL = {"Complete": "COMPLETED", "Failed": "FAILED"}
JOBSET_GROUP, JOBSET_VERSION, JOBSET_PLURAL = "jobset.x-k8s.io", "v1alpha2", "jobsets"


def render(plan: JobPlan) -> str:
    return render_yaml(plan)


def submit(plan: JobPlan, run_dir: Any = None) -> str:
    try:
        objects = render_objects(plan)
    except K8sRenderError as exc:  # the CLI renders first, so this is a second line of defence
        raise BackendError(str(exc)) from None
    for body in objects:
        kind, meta = body["kind"], body["metadata"]
        group, version = body["apiVersion"].split("/")
        if "namespace" in meta:
            create = lambda api, b=body, g=group, v=version: api.create_namespaced_custom_object(  # noqa: E731
                g, v, b["metadata"]["namespace"], plural(b["kind"]), b, _request_timeout=REQUEST_TIMEOUT_S
            )
        else:  # a ClusterTrainingRuntime named by its content: already there from an equal job is fine
            create = lambda api, b=body, g=group, v=version: api.create_cluster_custom_object(  # noqa: E731
                g, v, plural(b["kind"]), b, _request_timeout=REQUEST_TIMEOUT_S
            )
        call(
            create, what=f"create {kind} {meta.get('namespace', '')}/{meta['name']}".replace(" /", " "), exists_ok=True
        )
    job = objects[-1]["metadata"]
    return f"{job['namespace']}/{job['name']}"


def _api_of(record: dict) -> str:
    return ((record.get("spec") or {}).get("k8s") or {}).get("api") or "pytorchjob"  # records before TrainJob


def status(record: dict) -> str:
    if not record.get("backend_id"):  # a submit killed before it recorded the id (SUBMIT_INTERRUPTED)
        return "UNKNOWN"
    namespace, name = _split_id(record)
    api = _api_of(record)
    job = _get(api, namespace, name)
    if job is None:
        # Deleted: by our cancel (the record says so), by a TTL, or by someone else. The job's own terminal-state
        # file answers when the run dir is shared with this machine.
        recorded = record.get("state")
        if recorded == "CANCELLED":
            return recorded
        terminal = read_terminal_state(record["run_dir"]) if record.get("run_dir") else None
        if terminal:
            return terminal["state"]
        return recorded if recorded in ("COMPLETED", "FAILED", "TIMEOUT") else "UNKNOWN"
    if api == "pytorchjob":
        return state_from_pytorchjob(job)
    return state_from_trainjob(job, _jobset_restarts(namespace, name))


def _true_conditions(job: dict) -> dict[str, dict]:
    return {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}


def _terminal(by_type: dict[str, dict], table: dict[str, str]) -> str | None:
    for kind, state in table.items():
        if kind in by_type:
            reason = f"{by_type[kind].get('reason', '')} {by_type[kind].get('message', '')}".lower()
            return "TIMEOUT" if state == "FAILED" and "deadline" in reason else state
    return None


def state_from_pytorchjob(job: dict) -> str:
    """Our state from a PyTorchJob's status.conditions (and spec.runPolicy.suspend before any condition)."""
    by_type = _true_conditions(job)
    terminal = _terminal(by_type, _PYTORCHJOB_TERMINAL)
    if terminal:
        return terminal
    for kind, state in _PYTORCHJOB_ACTIVE.items():
        if kind in by_type:
            return state
    return "SUSPENDED" if ((job.get("spec") or {}).get("runPolicy") or {}).get("suspend") else "PENDING"


def state_from_trainjob(job: dict, jobset_restarts: int) -> str:
    """Our state from a TrainJob's conditions and status.jobsStatus, and its child JobSet's restart count."""
    by_type = _true_conditions(job)
    terminal = _terminal(by_type, _TRAINJOB_TERMINAL)
    if terminal:
        return terminal
    if "Suspended" in by_type or (job.get("spec") or {}).get("suspend"):
        return "SUSPENDED"
    jobs = (job.get("status") or {}).get("jobsStatus") or []
    if any(j.get("active", 0) > 0 and j.get("ready", 0) > 0 for j in jobs):
        return "RUNNING"
    return "REQUEUED" if jobset_restarts > 0 else "PENDING"


def _jobset_restarts(namespace: str, name: str) -> int:
    jobset = call(
        lambda api: api.get_namespaced_custom_object(
            JOBSET_GROUP, JOBSET_VERSION, namespace, JOBSET_PLURAL, name, _request_timeout=REQUEST_TIMEOUT_S
        ),
        what=f"get JobSet {namespace}/{name}",
        missing_ok=True,
    )
    return int(((jobset or {}).get("status") or {}).get("restarts") or 0)


def exit_code(record: dict) -> int | None:
    """The failing step's exit code: the run dir's state file (written by the job wrapper), else the terminated
    training container of node 0's latest pod."""
    terminal = read_terminal_state(record["run_dir"]) if record.get("run_dir") else None
    if terminal and isinstance(terminal.get("exit_code"), int):
        return terminal["exit_code"]
    namespace, name = _split_id(record)
    pod = _node0_pod(core_api(), namespace, _api_of(record), name)
    for container in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if container.get("name") == _container_name(record) and terminated.get("exitCode"):
            return int(terminated["exitCode"])
    return None


def cancel(record: dict) -> None:
    namespace, name = _split_id(record)
    api = _api_of(record)
    group, version, kind = _job_api(api)
    targets = [(kind, group, version)]
    if (
        api == "trainjob"
        and ((record.get("spec") or {}).get("k8s") or {}).get("runtime_kind") != "ClusterTrainingRuntime"
    ):
        targets.append(("TrainingRuntime", group, version))  # the per-job runtime has the job's name
    for what, g, v in targets:
        call(
            lambda client, g=g, v=v, what=what: client.delete_namespaced_custom_object(
                g, v, namespace, plural(what), name, propagation_policy="Background", _request_timeout=REQUEST_TIMEOUT_S
            ),
            what=f"delete {what} {namespace}/{name}",
            missing_ok=True,
        )
    # Once deleted, the cluster can no longer say what happened: the record remembers that we cancelled it.
    if record.get("run_dir"):
        try:
            update_record(record["run_dir"], lambda rec: add_state(rec, "CANCELLED", source="cancel"))
            record["state"] = "CANCELLED"
        except OSError:
            pass  # the record is a convenience here; the cluster object is gone either way


def logs(record: dict, follow: bool, poll_s: float = 2.0) -> None:
    """Print node 0's log; with `follow`, keep streaming (across pod restarts) until the job ends."""
    namespace, name = _split_id(record)
    core = core_api()
    streamed: set[tuple[str, int]] = set()  # (pod uid, restart count) already printed to the end
    container = _container_name(record)
    while True:
        pod = _node0_pod(core, namespace, _api_of(record), name)
        key = _container_key(pod, container)
        if pod is not None and key is not None and key not in streamed:
            _stream_log(core, namespace, pod["metadata"]["name"], container, follow)
            streamed.add(key)
        elif not follow:
            print(f"gemma3-launch: job {namespace}/{name} is {status(record)}: node 0 has no log yet", file=sys.stderr)
            return
        if not follow or status(record) not in ACTIVE:
            return
        time.sleep(poll_s)


# ---- helpers -----------------------------------------------------------------------------------------------------
def _job_api(api: str) -> tuple[str, str, str]:
    if api == "pytorchjob":
        from ..render_k8s import API_VERSION, KIND
    else:
        from ..render_trainjob import API_VERSION, KIND
    group, version = API_VERSION.split("/")
    return group, version, KIND


def _container_name(record: dict) -> str:
    from ..render_k8s import CONTAINER_NAME as PYTORCHJOB_CONTAINER
    from ..render_trainjob import CONTAINER_NAME as TRAINJOB_CONTAINER

    return PYTORCHJOB_CONTAINER if _api_of(record) == "pytorchjob" else TRAINJOB_CONTAINER


def _node0_selector(api: str, name: str) -> str:
    if api == "pytorchjob":
        from ..render_k8s import LABEL_JOB_ID, LABEL_ROLE

        return f"{LABEL_JOB_ID}={name},{LABEL_ROLE}=master"
    from ..render_trainjob import LABEL_COMPLETION_INDEX, LABEL_JOBSET_NAME

    return f"{LABEL_JOBSET_NAME}={name},{LABEL_COMPLETION_INDEX}=0"


def _split_id(record: dict) -> tuple[str, str]:
    backend_id = record.get("backend_id") or ""
    namespace, sep, name = backend_id.partition("/")
    if not sep or not name:
        raise BackendError(
            f"job record {record.get('job_id')}: expected a k8s id '<namespace>/<name>', got {backend_id!r}"
        )
    return namespace, name


def _get(api: str, namespace: str, name: str) -> dict | None:
    group, version, kind = _job_api(api)
    return call(
        lambda client: client.get_namespaced_custom_object(
            group, version, namespace, plural(kind), name, _request_timeout=REQUEST_TIMEOUT_S
        ),
        what=f"get {kind} {namespace}/{name}",
        missing_ok=True,
    )


def _node0_pod(core: Any, namespace: str, api: str, name: str) -> dict | None:
    from kubernetes.client.rest import ApiException

    selector = _node0_selector(api, name)
    try:
        pods = core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT_S)
    except ApiException as exc:
        raise BackendError(f"list pods of {selector}: {explain(exc)}") from None
    items = [core.api_client.sanitize_for_serialization(p) for p in pods.items]
    items.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
    return items[-1] if items else None


def _container_key(pod: dict | None, container: str) -> tuple[str, int] | None:
    """(pod uid, restart count) once the training container has started; None before."""
    for status_ in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if status_.get("name") == container:
            state = status_.get("state") or {}
            if "running" in state or "terminated" in state:
                return pod["metadata"]["uid"], int(status_.get("restartCount") or 0)
    return None


def _stream_log(core: Any, namespace: str, pod_name: str, container: str, follow: bool) -> None:
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    out = sys.stdout.buffer
    try:
        response = core.read_namespaced_pod_log(
            pod_name, namespace, container=container, follow=follow, _preload_content=False
        )
        for chunk in response.stream(65536):
            out.write(chunk)
            out.flush()
        response.release_conn()
    except ApiException as exc:
        raise BackendError(f"logs of pod {namespace}/{pod_name}: {explain(exc)}") from None
    except HTTPError as exc:
        raise BackendError(f"logs of pod {namespace}/{pod_name}: stream broke ({exc.__class__.__name__})") from None

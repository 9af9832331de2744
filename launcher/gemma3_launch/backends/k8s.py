"""Kubernetes backend: the plan as a Kubeflow PyTorchJob, through the `kubernetes` Python client.

submit creates exactly render_k8s.render_pytorchjob(plan); status reads the job's conditions (the training
operator's word, not the pods'); logs streams the master pod's container; cancel deletes the job (its pods go with
it through owner references). Cluster access: $KUBECONFIG / ~/.kube/config (current context), else the in-cluster
service account. The backend id is `<namespace>/<name>`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from ..plan import JobPlan
from ..record import add_state, read_terminal_state, update_record
from ..render_k8s import (
    API_VERSION,
    CONTAINER_NAME,
    LABEL_JOB_ID,
    LABEL_ROLE,
    K8sRenderError,
    render_pytorchjob,
    render_pytorchjob_yaml,
)
from . import BackendError

GROUP, VERSION = API_VERSION.split("/")
PLURAL = "pytorchjobs"
REQUEST_TIMEOUT_S = 30
#: condition type (status True) -> our state; terminal conditions win over the others.
_TERMINAL_CONDITIONS = {"Succeeded": "COMPLETED", "Failed": "FAILED"}
_ACTIVE_CONDITIONS = {"Suspended": "SUSPENDED", "Restarting": "REQUEUED", "Running": "RUNNING", "Created": "PENDING"}


def render(plan: JobPlan) -> str:
    return render_pytorchjob_yaml(plan)


def submit(plan: JobPlan, run_dir: Any = None) -> str:
    try:
        body = render_pytorchjob(plan)
    except K8sRenderError as exc:  # the CLI renders first, so this is a second line of defence
        raise BackendError(str(exc)) from None
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    _call(
        lambda api: api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, _request_timeout=REQUEST_TIMEOUT_S
        ),
        what=f"create PyTorchJob {namespace}/{name}",
    )
    return f"{namespace}/{name}"


def status(record: dict) -> str:
    namespace, name = _split_id(record)
    job = _get_job(namespace, name)
    if job is None:
        # Deleted: by our cancel (the record says so), by ttlSecondsAfterFinished, or by someone else. The job's
        # own terminal-state file answers when the run dir is shared with this machine.
        recorded = record.get("state")
        if recorded == "CANCELLED":
            return recorded
        terminal = read_terminal_state(record["run_dir"]) if record.get("run_dir") else None
        if terminal:
            return terminal["state"]
        return recorded if recorded in ("COMPLETED", "FAILED", "TIMEOUT") else "UNKNOWN"
    return state_from_job(job)


def state_from_job(job: dict) -> str:
    """Our state from a PyTorchJob's status.conditions (and spec.runPolicy.suspend before any condition)."""
    conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    by_type = {c.get("type"): c for c in conditions}
    for kind, state in _TERMINAL_CONDITIONS.items():
        if kind in by_type:
            reason = f"{by_type[kind].get('reason', '')} {by_type[kind].get('message', '')}".lower()
            return "TIMEOUT" if state == "FAILED" and "deadline" in reason else state
    for kind, state in _ACTIVE_CONDITIONS.items():
        if kind in by_type:
            return state
    if ((job.get("spec") or {}).get("runPolicy") or {}).get("suspend"):
        return "SUSPENDED"
    return "PENDING"


def cancel(record: dict) -> None:
    namespace, name = _split_id(record)
    _call(
        lambda api: api.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background", _request_timeout=REQUEST_TIMEOUT_S
        ),
        what=f"delete PyTorchJob {namespace}/{name}",
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
    """Print the master pod's log; with `follow`, keep streaming (across pod restarts) until the job ends."""
    namespace, name = _split_id(record)
    core = _core_api()
    selector = f"{LABEL_JOB_ID}={name},{LABEL_ROLE}=master"
    streamed: set[tuple[str, int]] = set()  # (pod uid, restart count) already printed to the end
    while True:
        pod = _master_pod(core, namespace, selector)
        key = _container_key(pod)
        if pod is not None and key is not None and key not in streamed:
            _stream_log(core, namespace, pod["metadata"]["name"], follow)
            streamed.add(key)
        elif not follow:
            state = status(record)
            print(f"gemma3-launch: job {namespace}/{name} is {state}: its master pod has no log yet", file=sys.stderr)
            return
        if not follow:
            return
        state = status(record)
        if state not in ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED"):
            return
        time.sleep(poll_s)


# ---- helpers -----------------------------------------------------------------------------------------------------
def _split_id(record: dict) -> tuple[str, str]:
    backend_id = record.get("backend_id") or ""
    namespace, sep, name = backend_id.partition("/")
    if not sep or not name:
        raise BackendError(
            f"job record {record.get('job_id')}: expected a k8s id '<namespace>/<name>', got {backend_id!r}"
        )
    return namespace, name


def _api_client() -> Any:
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        api_client = config.new_client_from_config()
        if not api_client.configuration.verify_ssl:
            # the kubeconfig says insecure-skip-tls-verify: the user's choice, not a warning on every request
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        return api_client
    except (ConfigException, FileNotFoundError, TypeError):
        pass
    try:
        from kubernetes import client

        config.load_incluster_config()
        return client.ApiClient()
    except ConfigException:
        raise BackendError(
            "no Kubernetes access: expected a kubeconfig ($KUBECONFIG or ~/.kube/config) or to run inside a cluster"
        ) from None


def _custom_api() -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(_api_client())


def _core_api() -> Any:
    from kubernetes import client

    return client.CoreV1Api(_api_client())


def _call(fn: Callable[[Any], Any], *, what: str, missing_ok: bool = False) -> Any:
    """Run one API call; every failure becomes a one-line BackendError that says what to do."""
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    api = _custom_api()
    try:
        return fn(api)
    except ApiException as exc:
        if exc.status == 404 and missing_ok:
            return None
        raise BackendError(f"{what}: {_explain(exc)}") from None
    except HTTPError as exc:
        host = api.api_client.configuration.host
        raise BackendError(f"{what}: cannot reach the Kubernetes API at {host} ({exc.__class__.__name__})") from None


def _explain(exc: Any) -> str:
    try:
        message = json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError, AttributeError):
        message = exc.reason
    if exc.status == 404 and "the server could not find the requested resource" in str(message):
        return "the PyTorchJob CRD (kubeflow.org/v1) is not installed: install the Kubeflow training operator"
    if exc.status == 403:
        return f"forbidden: {message} (check your RBAC permissions for pytorchjobs in this namespace)"
    return f"HTTP {exc.status}: {' '.join(str(message).split())}"


def _get_job(namespace: str, name: str) -> dict | None:
    return _call(
        lambda api: api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT_S
        ),
        what=f"get PyTorchJob {namespace}/{name}",
        missing_ok=True,
    )


def _master_pod(core: Any, namespace: str, selector: str) -> dict | None:
    from kubernetes.client.rest import ApiException

    try:
        pods = core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT_S)
    except ApiException as exc:
        raise BackendError(f"list pods of {selector}: {_explain(exc)}") from None
    items = [core.api_client.sanitize_for_serialization(p) for p in pods.items]
    items.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
    return items[-1] if items else None


def _container_key(pod: dict | None) -> tuple[str, int] | None:
    """(pod uid, restart count) once the training container has started; None before."""
    if pod is None:
        return None
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER_NAME:
            state = status.get("state") or {}
            if "running" in state or "terminated" in state:
                return pod["metadata"]["uid"], int(status.get("restartCount") or 0)
    return None


def _stream_log(core: Any, namespace: str, pod_name: str, follow: bool) -> None:
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    out = sys.stdout.buffer
    try:
        response = core.read_namespaced_pod_log(
            pod_name, namespace, container=CONTAINER_NAME, follow=follow, _preload_content=False
        )
        for chunk in response.stream(65536):
            out.write(chunk)
            out.flush()
        response.release_conn()
    except ApiException as exc:
        raise BackendError(f"logs of pod {namespace}/{pod_name}: {_explain(exc)}") from None
    except HTTPError as exc:
        raise BackendError(f"logs of pod {namespace}/{pod_name}: stream broke ({exc.__class__.__name__})") from None

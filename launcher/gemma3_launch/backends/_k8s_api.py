"""Kubernetes API access for the k8s backend: the client from kubeconfig or in-cluster, one-line errors.

The plain `kubernetes` client (not the Kubeflow SDK): docs/CONTRACTS.md says why. Imported lazily, so `--help`
and `render` never load it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from . import BackendError

#: custom resource kind -> its plural (the URL segment)
PLURALS = {
    "PyTorchJob": "pytorchjobs",
    "TrainJob": "trainjobs",
    "TrainingRuntime": "trainingruntimes",
    "ClusterTrainingRuntime": "clustertrainingruntimes",
    "JobSet": "jobsets",
}


def plural(kind: str) -> str:
    return PLURALS[kind]


def api_client() -> Any:
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        client = config.new_client_from_config()
        if not client.configuration.verify_ssl:
            # the kubeconfig says insecure-skip-tls-verify: the user's choice, not a warning on every request
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        return client
    except (ConfigException, FileNotFoundError, TypeError):
        pass
    try:
        from kubernetes import client as k8s_client

        config.load_incluster_config()
        return k8s_client.ApiClient()
    except ConfigException:
        raise BackendError(
            "no Kubernetes access: expected a kubeconfig ($KUBECONFIG or ~/.kube/config) or to run inside a cluster"
        ) from None


def custom_api() -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api_client())


def core_api() -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client())


def call(fn: Callable[[Any], Any], *, what: str, missing_ok: bool = False, exists_ok: bool = False) -> Any:
    """Run one CustomObjectsApi call; every failure becomes a one-line BackendError that says what to do."""
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    api = custom_api()
    try:
        return fn(api)
    except ApiException as exc:
        if (exc.status == 404 and missing_ok) or (exc.status == 409 and exists_ok):
            return None
        raise BackendError(f"{what}: {explain(exc)}") from None
    except HTTPError as exc:
        host = api.api_client.configuration.host
        raise BackendError(f"{what}: cannot reach the Kubernetes API at {host} ({exc.__class__.__name__})") from None


def explain(exc: Any) -> str:
    try:
        message = json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError, AttributeError):
        message = exc.reason
    if exc.status == 404 and "the server could not find the requested resource" in str(message):
        return (
            "the job's API is not installed: install Kubeflow Trainer v2 (TrainJob, the default) or set "
            "k8s.api: pytorchjob for a Training Operator v1 cluster"
        )
    if exc.status == 403:
        return f"forbidden: {message} (check your RBAC permissions for this kind in this namespace)"
    return f"HTTP {exc.status}: {' '.join(str(message).split())}"

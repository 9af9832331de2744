"""Against a REAL kube-apiserver (+ etcd, the PyTorchJob CRD installed; no operator, no kubelet): the CLI submits,
follows the conditions this test patches on the status subresource in the operator's place, cancels; and the
Helm chart installs and uninstalls the same PyTorchJob."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import pytest
from k8s_helpers import CHART, REPO
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from gemma3_launch.loader import load_spec
from gemma3_launch.plan import Cluster, make_plan
from gemma3_launch.render_helm import helm_values
from gemma3_launch.render_k8s import render_pytorchjob

pytestmark = [pytest.mark.k8s, pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")]
FEATURES = REPO / "tests" / "k8s" / "specs" / "k8s_features_2node.yaml"
GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
NAMESPACE = "ml-training"


@pytest.fixture(scope="module")
def api(kube_apiserver: Path) -> client.ApiClient:
    api_client = config.new_client_from_config(config_file=str(kube_apiserver))
    try:
        client.CoreV1Api(api_client).create_namespace({"metadata": {"name": NAMESPACE}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    return api_client


@pytest.fixture()
def cli(kube_apiserver: Path, tmp_path: Path):
    """`gemma3-launch ARGS` with this cluster's kubeconfig and a private job index and run dirs."""
    env = {**os.environ, "KUBECONFIG": str(kube_apiserver), "XDG_STATE_HOME": str(tmp_path / "state")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "gemma3_launch.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def _sets(tmp_path: Path) -> list[str]:
    return ["--set", f"runs_dir={tmp_path}/runs", "--set", "k8s.queue=null"]


def _submit(cli, tmp_path: Path) -> str:
    result = cli("submit", str(FEATURES), "--cluster", "k8s", *_sets(tmp_path))
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.split("submitted ", 1)[1].split()[0]
    assert f"k8s id {NAMESPACE}/{job_id}" in result.stdout
    return job_id


def _status(cli, job_id: str) -> str:
    result = cli("status", job_id)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[1]


def _set_conditions(api: client.ApiClient, name: str, *types: str) -> None:
    """Play the training operator: append conditions (status True) on the status subresource."""
    stamp = "2026-01-01T00:00:00Z"
    conditions = [
        {
            "type": t,
            "status": "True",
            "reason": f"PyTorchJob{t}",
            "message": f"job is {t.lower()}",
            "lastTransitionTime": stamp,
            "lastUpdateTime": stamp,
        }
        for t in types
    ]
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, NAMESPACE, PLURAL, name, {"status": {"conditions": conditions}}
    )


def test_submit_creates_the_rendered_job_and_status_follows_its_conditions(api, cli, tmp_path: Path) -> None:
    job_id = _submit(cli, tmp_path)
    stored = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, job_id)
    spec = load_spec(FEATURES, [s for s in _sets(tmp_path) if s != "--set"])
    expected = render_pytorchjob(make_plan(spec, Cluster("k8s"), job_id=job_id))
    assert stored["spec"] == expected["spec"]
    assert stored["metadata"]["labels"] == expected["metadata"]["labels"]

    assert _status(cli, job_id) == "PENDING"
    _set_conditions(api, job_id, "Created", "Running")
    assert _status(cli, job_id) == "RUNNING"
    _set_conditions(api, job_id, "Created", "Running", "Restarting")
    assert _status(cli, job_id) == "REQUEUED"
    _set_conditions(api, job_id, "Created", "Succeeded")
    assert _status(cli, job_id) == "COMPLETED"

    logs = cli("logs", job_id)  # no kubelet here: no pod, so no log yet - said on one line, not a traceback
    assert logs.returncode == 0 and "no log yet" in logs.stderr


def test_cancel_deletes_the_job(api, cli, tmp_path: Path) -> None:
    job_id = _submit(cli, tmp_path)
    _set_conditions(api, job_id, "Created", "Running")
    result = cli("cancel", job_id)
    assert result.returncode == 0, result.stderr
    with pytest.raises(ApiException) as gone:
        client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, job_id)
    assert gone.value.status == 404
    assert _status(cli, job_id) == "CANCELLED"
    assert cli("cancel", job_id).returncode == 0  # idempotent


def test_submit_into_a_missing_namespace_fails_in_one_line(cli, tmp_path: Path) -> None:
    result = cli("submit", str(FEATURES), "--cluster", "k8s", *_sets(tmp_path), "--set", "k8s.namespace=nowhere")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "nowhere" in result.stderr, result.stderr


def test_helm_install_and_uninstall(api, kube_apiserver: Path, tmp_path: Path) -> None:
    spec = load_spec(FEATURES, [f"runs_dir={tmp_path}/runs", "k8s.queue=null"])
    plan = make_plan(spec, Cluster("k8s"), job_id="helm-installed")
    helm_config = helm.Config(kubeconfig_path=str(kube_apiserver), namespace=NAMESPACE)
    release = helm_config.install(str(CHART), "gemma3-job", helm_values(plan), namespace=NAMESPACE)
    assert release["name"] == "gemma3-job"
    custom = client.CustomObjectsApi(api)
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "helm-installed")
    assert stored["spec"] == render_pytorchjob(plan)["spec"]
    assert [r["name"] for r in helm_config.list()] == ["gemma3-job"]
    helm_config.uninstall("gemma3-job")
    with pytest.raises(ApiException) as gone:
        custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "helm-installed")
    assert gone.value.status == 404


def test_status_of_a_job_the_cluster_forgot(api, cli, tmp_path: Path) -> None:
    """After ttlSecondsAfterFinished deletes the job, its own terminal-state file (shared run dir) still answers."""
    from gemma3_launch.record import write_terminal_state

    job_id = _submit(cli, tmp_path)
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, job_id)
    assert _status(cli, job_id) == "UNKNOWN"
    write_terminal_state(tmp_path / "runs" / job_id, "COMPLETED", 0)
    assert _status(cli, job_id) == "COMPLETED"

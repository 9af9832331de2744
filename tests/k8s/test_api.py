"""Against a REAL kube-apiserver (+ etcd, the five vendored CRDs installed; no operator, no kubelet): the CLI
submits a TrainJob + its TrainingRuntime (or a PyTorchJob), follows the statuses this test patches on the status
subresources in the operators' place (TrainJob, its JobSet, a node-0 pod), cancels; and the Helm chart installs and
uninstalls the same objects for both APIs."""

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

from gemma3_launch.k8s_manifests import render_objects
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


def _sets(tmp_path: Path, api: str = "pytorchjob") -> list[str]:
    return ["--set", f"runs_dir={tmp_path}/runs", "--set", "k8s.queue=null", "--set", f"k8s.api={api}"]


def _submit(cli, tmp_path: Path, api: str = "pytorchjob") -> str:
    # the run dir is this machine's tmp_path (no PVC here): opt out of the persistent-volume check
    result = cli("submit", str(FEATURES), "--cluster", "k8s", *_sets(tmp_path, api), "--ephemeral-run-dir-ok")
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
    spec = spec.model_copy(update={"runs_dir": str(tmp_path / "runs")})
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
    result = cli(
        "submit",
        str(FEATURES),
        "--cluster",
        "k8s",
        *_sets(tmp_path),
        "--set",
        "k8s.namespace=nowhere",
        "--ephemeral-run-dir-ok",
    )
    assert result.returncode == 1
    (error,) = [line for line in result.stderr.strip().splitlines() if "warning:" not in line]
    assert "nowhere" in error, result.stderr


@pytest.mark.parametrize("job_api", ["trainjob", "pytorchjob"])
def test_helm_install_and_uninstall(api, kube_apiserver: Path, tmp_path: Path, job_api: str) -> None:
    release_name = f"helm-{job_api}"  # the release name is the objects' name: the job id
    spec = load_spec(FEATURES, [f"runs_dir={tmp_path}/runs", "k8s.queue=null", f"k8s.api={job_api}"])
    plan = make_plan(spec, Cluster("k8s"), job_id=release_name)
    helm_config = helm.Config(kubeconfig_path=str(kube_apiserver), namespace=NAMESPACE)
    release = helm_config.install(str(CHART), release_name, helm_values(plan), namespace=NAMESPACE)
    assert release["name"] == release_name
    custom = client.CustomObjectsApi(api)
    for expected in render_objects(plan):
        group, version = expected["apiVersion"].split("/")
        stored = custom.get_namespaced_custom_object(group, version, NAMESPACE, _plural(expected["kind"]), release_name)
        difference = _diff(stored["spec"], expected["spec"])
        assert not difference, "\n".join(difference)
    assert release_name in [r["name"] for r in helm_config.list()]
    helm_config.uninstall(release_name)
    for expected in render_objects(plan):
        group, version = expected["apiVersion"].split("/")
        with pytest.raises(ApiException) as gone:
            custom.get_namespaced_custom_object(group, version, NAMESPACE, _plural(expected["kind"]), release_name)
        assert gone.value.status == 404


def _diff(stored: dict, expected: dict) -> list[str]:
    """The lines in which what the API server stored differs from what we sent (empty: the same)."""
    import difflib
    import json

    def lines(document: dict) -> list[str]:
        return json.dumps(document, indent=1, sort_keys=True).splitlines()

    return [line for line in difflib.unified_diff(lines(expected), lines(stored), lineterm="", n=2)]


def _plural(kind: str) -> str:
    return {"TrainJob": "trainjobs", "TrainingRuntime": "trainingruntimes", "PyTorchJob": "pytorchjobs"}[kind]


# ---- Kubeflow Trainer v2 -----------------------------------------------------------------------------------------
TRAINER = ("trainer.kubeflow.org", "v1alpha1")
STAMP = "2026-01-01T00:00:00Z"


def _patch_trainjob(api: client.ApiClient, name: str, *, ready: int = 0, conditions: tuple[str, ...] = ()) -> None:
    """Play the Trainer controller: the TrainJob's jobsStatus (one child Job) and conditions."""
    status = {
        "jobsStatus": [{"name": "node", "active": 1, "ready": ready, "succeeded": 0, "failed": 0, "suspended": 0}],
        "conditions": [
            {"type": t, "status": "True", "reason": t, "message": f"job {t.lower()}", "lastTransitionTime": STAMP}
            for t in conditions
        ],
    }
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        *TRAINER, NAMESPACE, "trainjobs", name, {"status": status}
    )


def _jobset_restarted(api: client.ApiClient, name: str, restarts: int) -> None:
    """Play the JobSet controller: the TrainJob's child JobSet (same name), restarted `restarts` times."""
    custom = client.CustomObjectsApi(api)
    body = {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicatedJobs": [
                {
                    "name": "node",
                    "template": {"spec": {"template": {"spec": {"containers": [{"name": "node", "image": "x"}]}}}},
                }
            ]
        },
    }
    try:
        custom.create_namespaced_custom_object("jobset.x-k8s.io", "v1alpha2", NAMESPACE, "jobsets", body)
    except ApiException as exc:
        if exc.status != 409:
            raise
    custom.patch_namespaced_custom_object_status(
        "jobset.x-k8s.io", "v1alpha2", NAMESPACE, "jobsets", name, {"status": {"restarts": restarts}}
    )


def test_trainjob_submit_status_through_every_state(api, cli, tmp_path: Path) -> None:
    job_id = _submit(cli, tmp_path, "trainjob")
    custom = client.CustomObjectsApi(api)
    spec = load_spec(FEATURES, [s for s in _sets(tmp_path, "trainjob") if s != "--set"])
    spec = spec.model_copy(update={"runs_dir": str(tmp_path / "runs")})
    runtime, job = render_objects(make_plan(spec, Cluster("k8s"), job_id=job_id))
    assert (
        custom.get_namespaced_custom_object(*TRAINER, NAMESPACE, "trainingruntimes", job_id)["spec"] == runtime["spec"]
    )
    stored = custom.get_namespaced_custom_object(*TRAINER, NAMESPACE, "trainjobs", job_id)
    assert stored["spec"] == job["spec"] and stored["metadata"]["labels"] == job["metadata"]["labels"]

    assert _status(cli, job_id) == "PENDING"
    _patch_trainjob(api, job_id, ready=1)
    assert _status(cli, job_id) == "RUNNING"
    _jobset_restarted(api, job_id, 1)  # exit 199 / a disruption restarted the JobSet ...
    _patch_trainjob(api, job_id, ready=0)  # ... and the new attempt is not ready yet
    assert _status(cli, job_id) == "REQUEUED"
    _patch_trainjob(api, job_id, ready=1)
    assert _status(cli, job_id) == "RUNNING"
    _patch_trainjob(api, job_id, conditions=("Complete",))
    assert _status(cli, job_id) == "COMPLETED"
    logs = cli("logs", job_id)  # no kubelet: no pod, so no log yet - one line, not a traceback
    assert logs.returncode == 0 and "no log yet" in logs.stderr


def test_a_failed_trainjob_shows_the_failing_steps_exit_code(api, cli, tmp_path: Path) -> None:
    """No state file in the run dir (the pod's run dir is not this machine's): the exit code comes from node 0's
    terminated container, found by the labels JobSet and the Job controller put on it."""
    job_id = _submit(cli, tmp_path, "trainjob")
    core = client.CoreV1Api(api)
    pod = {
        "metadata": {
            "name": f"{job_id}-node-0-0-abcde",
            "labels": {"jobset.sigs.k8s.io/jobset-name": job_id, "batch.kubernetes.io/job-completion-index": "0"},
        },
        "spec": {"containers": [{"name": "node", "image": "x"}]},
    }
    core.create_namespaced_pod(NAMESPACE, pod)
    terminated = {"terminated": {"exitCode": 3, "reason": "Error", "startedAt": STAMP, "finishedAt": STAMP}}
    core.patch_namespaced_pod_status(
        pod["metadata"]["name"],
        NAMESPACE,
        {
            "status": {
                "containerStatuses": [
                    {
                        "name": "node",
                        "image": "x",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": terminated,
                    }
                ]
            }
        },
    )
    _patch_trainjob(api, job_id, conditions=("Failed",))
    result = cli("status", job_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1:3] == ["FAILED", "(exit"] and "(exit 3)" in result.stdout


def test_trainjob_cancel_deletes_it_and_its_runtime(api, cli, tmp_path: Path) -> None:
    job_id = _submit(cli, tmp_path, "trainjob")
    _patch_trainjob(api, job_id, ready=1)
    result = cli("cancel", job_id)
    assert result.returncode == 0, result.stderr
    custom = client.CustomObjectsApi(api)
    for plural in ("trainjobs", "trainingruntimes"):
        with pytest.raises(ApiException) as gone:
            custom.get_namespaced_custom_object(*TRAINER, NAMESPACE, plural, job_id)
        assert gone.value.status == 404
    assert _status(cli, job_id) == "CANCELLED"
    assert cli("cancel", job_id).returncode == 0  # idempotent


def test_status_of_a_job_the_cluster_forgot(api, cli, tmp_path: Path) -> None:
    """After ttlSecondsAfterFinished deletes the job, its own terminal-state file (shared run dir) still answers."""
    from gemma3_launch.record import write_terminal_state

    job_id = _submit(cli, tmp_path)
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, job_id)
    assert _status(cli, job_id) == "UNKNOWN"
    write_terminal_state(tmp_path / "runs" / job_id, "COMPLETED", 0)
    assert _status(cli, job_id) == "COMPLETED"

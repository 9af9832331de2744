"""docs/quickstart-kubernetes.md runs against the k8s testbed: every ```bash block of the page, in order, as one bash
script from the repository root, with only the page's settings block changed (`CKPT_ROOT`, where the `checkpoints`
claim is mounted, becomes a temporary directory: it stands for the volume mounted on this machine too) and the
bundled 1B LoRA spec and image name as the page gives them.

The testbed is a real kube-apiserver (with etcd and the Kubeflow CRDs installed) but no kubelets and no operator, so
"runs" means exactly: validate and render work; submit creates the real TrainingRuntime and TrainJob objects, which
the apiserver accepts after validating them against the real CRD schemas; list and status report the job (PENDING:
nothing schedules it); logs says node 0 has no log yet; and cancel (run by the test after the page's commands, as the
page describes) deletes the TrainJob and status then says CANCELLED. No pod ever starts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from doc_blocks import script_with
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

pytestmark = [pytest.mark.k8s, pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")]

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "quickstart-kubernetes.md"
GROUP, VERSION, NAMESPACE = "trainer.kubeflow.org", "v1alpha1", "default"


def test_kubernetes_quickstart_runs_on_the_testbed(kube_apiserver: Path, tmp_path: Path) -> None:
    api = config.new_client_from_config(config_file=str(kube_apiserver))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # gemma3-launch
        "KUBECONFIG": str(kube_apiserver),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "PYTHONPATH": f"{REPO / 'launcher'}{os.pathsep}{REPO / 'runtime'}",
    }
    env.pop("GEMMA3_LAUNCH_TRACEBACK", None)
    script = script_with(PAGE, {"CKPT_ROOT": str(tmp_path / "checkpoints")})
    res = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"stdout:\n{res.stdout[-4000:]}\nstderr:\n{res.stderr[-4000:]}"
    out = res.stdout
    assert out.startswith("gemma3-launch ")  # --version
    assert "ok: lora-1b (finetune) on k8s" in out  # validate
    assert "kind: TrainJob" in out and "kind: TrainingRuntime" in out  # render
    submitted = re.search(r"submitted (lora-1b-\S+)", out)
    assert submitted, out[-3000:]
    job_id = submitted.group(1)
    assert re.search(rf"{re.escape(job_id)}\s+PENDING", out), out[-3000:]  # list / status: created, not scheduled
    assert "node 0 has no log yet" in res.stderr  # logs: no kubelet, no pod

    objects = client.CustomObjectsApi(api)
    trainjob = objects.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "trainjobs", job_id)
    runtime_name = trainjob["spec"]["runtimeRef"]["name"]
    objects.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "trainingruntimes", runtime_name)
    assert str(tmp_path / "checkpoints" / "runs") in str(trainjob)  # the run dir on the volume

    launch = [sys.executable, "-m", "gemma3_launch.cli"]
    cancel = subprocess.run([*launch, "cancel", job_id], cwd=REPO, env=env, capture_output=True, text=True)
    assert cancel.returncode == 0, cancel.stderr
    with pytest.raises(ApiException) as gone:
        objects.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "trainjobs", job_id)
    assert gone.value.status == 404
    status = subprocess.run([*launch, "status", job_id], cwd=REPO, env=env, capture_output=True, text=True)
    assert status.returncode == 0 and status.stdout.split()[1] == "CANCELLED", status.stdout + status.stderr

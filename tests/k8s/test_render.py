"""The PyTorchJob rendered from every job spec: valid against the real CRD (strictly), core objects valid for
Kubernetes, and the decisions issue 7 asks for are in the manifest (run policy, restart policy, GPUs, /dev/shm,
PVCs, secrets only by reference, scheduling knobs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from k8s_helpers import REPO, SPECS, crd_errors, k8s_plan, needs_k8s_secret, spec_id

from gemma3_launch.contract import REQUEUE_EXIT_CODE
from gemma3_launch.k8s_manifests import render_objects, render_yaml
from gemma3_launch.render_k8s import K8sRenderError, render_pytorchjob

pytestmark = pytest.mark.k8s
KUBE_VERSION = "1.30.0"
FEATURES = REPO / "tests" / "k8s" / "specs" / "k8s_features_2node.yaml"


def _plan(path: Path, api: str = "pytorchjob"):
    plan = k8s_plan(path, **{"k8s.api": api})
    if needs_k8s_secret(plan):
        return k8s_plan(path, **{"k8s.api": api, "k8s.secret_name": "gemma3-credentials"})
    return plan


def _replicas(job: dict) -> dict:
    return job["spec"]["pytorchReplicaSpecs"]


def test_the_example_specs_are_checked() -> None:
    assert any(path.parent.name == "jobspecs" for path in SPECS), "no job specs in jobspecs/ to check"


@pytest.mark.parametrize("path", SPECS, ids=spec_id)
def test_pytorchjob_validates_strictly_against_the_crd(path: Path, pytorchjob_validator) -> None:
    job = render_pytorchjob(_plan(path))
    assert crd_errors(pytorchjob_validator, job) == []


@pytest.mark.parametrize("path", SPECS, ids=spec_id)
def test_pod_templates_are_valid_kubernetes_objects(path: Path) -> None:
    job = render_pytorchjob(_plan(path))
    for role, replica in _replicas(job).items():
        template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{job['metadata']['name']}-{role}"},
            "template": replica["template"],
        }
        kubernetes_validate.validate(template, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("path", SPECS, ids=spec_id)
def test_mount_paths_and_volume_names_are_unique(path: Path) -> None:
    """What the schemas cannot see but the kubelet refuses: two volumes at one path (a spec mount and a PVC)."""
    for replica in _replicas(render_pytorchjob(_plan(path))).values():
        pod = replica["template"]["spec"]
        paths = [m["mountPath"].rstrip("/") for m in pod["containers"][0]["volumeMounts"]]
        names = [v["name"] for v in pod["volumes"]]
        assert len(paths) == len(set(paths)) and len(names) == len(set(names))
        assert {m["name"] for m in pod["containers"][0]["volumeMounts"]} == set(names)


def test_the_validators_catch_typos(pytorchjob_validator) -> None:
    """Both checks above can fail: a misspelt run-policy field and a misspelt secretKeyRef field are caught."""
    job = render_pytorchjob(_plan(FEATURES))
    job["spec"]["runPolicy"]["backofLimit"] = 3
    assert any("backofLimit" in e for e in crd_errors(pytorchjob_validator, job))
    template = _replicas(render_pytorchjob(_plan(FEATURES)))["Master"]["template"]
    template["spec"]["containers"][0]["env"][-1]["valueFrom"]["secretKeyRef"]["nam"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template},
            KUBE_VERSION,
            strict=True,
        )


@pytest.mark.parametrize("path", SPECS, ids=spec_id)
def test_run_policy_and_restart_policy_are_explicit(path: Path) -> None:
    plan = _plan(path)
    job = render_pytorchjob(plan)
    assert job["spec"]["runPolicy"] == {
        "backoffLimit": plan.k8s.backoff_limit,
        "cleanPodPolicy": "Running",
        "ttlSecondsAfterFinished": plan.k8s.ttl_seconds_after_finished,
        "activeDeadlineSeconds": plan.resources.time_limit_s,
        "suspend": bool(plan.k8s.queue),
    }
    assert job["spec"]["nprocPerNode"] == str(plan.resources.nproc_per_node)
    replicas = _replicas(job)
    assert replicas["Master"]["replicas"] == 1
    assert replicas.get("Worker", {"replicas": 0})["replicas"] == plan.resources.nodes - 1
    assert {r["restartPolicy"] for r in replicas.values()} == {"ExitCode"}
    assert 128 <= REQUEUE_EXIT_CODE <= 255, "ExitCode restarts only on 128-255"


def test_every_k8s_knob_reaches_the_pods() -> None:
    plan = _plan(FEATURES)
    job = render_pytorchjob(plan)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["metadata"]["namespace"] == "ml-training"
    for replica in _replicas(job).values():
        pod = replica["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert container["resources"]["limits"]["memory"] == "512Gi"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {"gemma3-checkpoints", "hf-cache"}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/dev/shm"]["name"] == "dshm" and mounts["/root/.cache/huggingface"]["readOnly"] is True
        assert mounts["/data"]["readOnly"] is True  # the spec's host mount
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert pod["priorityClassName"] == "ml-high" and pod["serviceAccountName"] == "trainer"
        secret_env = [e for e in container["env"] if "valueFrom" in e]
        assert secret_env == [
            {"name": name, "valueFrom": {"secretKeyRef": {"name": "gemma3-credentials", "key": name}}}
            for name in ("HF_TOKEN", "WANDB_API_KEY")
        ]
        plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        assert plain == dict(plan.env)


def test_single_node_cpu_job_has_no_worker_and_no_gpu() -> None:
    plan = k8s_plan(FEATURES, **{"resources.nodes": "1", "resources.gpus_per_node": "0", "k8s.queue": "null"})
    job = render_pytorchjob(plan)
    assert list(_replicas(job)) == ["Master"]
    container = _replicas(job)["Master"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert job["spec"]["runPolicy"]["suspend"] is False and "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]


def test_secrets_without_a_kubernetes_secret_is_a_one_line_input_error() -> None:
    plan = k8s_plan(FEATURES, **{"k8s.secret_name": "null"})
    with pytest.raises(K8sRenderError, match=r"^k8s\.secret_name: expected .*HF_TOKEN"):
        render_pytorchjob(plan)
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "gemma3_launch.cli",
            "render",
            str(FEATURES),
            "--cluster",
            "k8s",
            "--set",
            "k8s.secret_name=null",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 2, cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1 and "k8s.secret_name" in cli.stderr


@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
@pytest.mark.parametrize("path", SPECS, ids=spec_id)
def test_no_secret_value_in_any_manifest(path: Path, api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sentinel values in the submitting environment never reach the objects or the Helm values."""
    sentinel = "hf_SENTINELsecretVALUE0123456789abcdef"
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY"):
        monkeypatch.setenv(name, sentinel)
    from gemma3_launch.render_helm import helm_values_yaml

    plan = _plan(path, api)
    rendered = render_yaml(plan) + helm_values_yaml(plan)
    assert sentinel not in rendered
    for name in plan.secrets:
        assert f"name: {name}\n" in rendered  # present, but only as a reference


@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
def test_render_cli_prints_the_objects_submit_would_create(api: str) -> None:
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "gemma3_launch.cli",
            "render",
            str(FEATURES),
            "--cluster",
            "k8s",
            "--set",
            f"k8s.api={api}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    objects = list(yaml.safe_load_all(cli.stdout))
    assert objects == render_objects(make_cli_plan(FEATURES, api))
    assert [o["kind"] for o in objects] == (["TrainingRuntime", "TrainJob"] if api == "trainjob" else ["PyTorchJob"])


def make_cli_plan(path: Path, api: str):
    """The plan exactly as the CLI builds it (default job id)."""
    from gemma3_launch.loader import load_spec
    from gemma3_launch.plan import Cluster, make_plan

    return make_plan(load_spec(path, [f"k8s.api={api}"]), Cluster("k8s"))


def test_render_loads_neither_torch_nor_the_kubernetes_client() -> None:
    code = (
        "import sys; from gemma3_launch.cli import main; "
        f"main(['render', {str(FEATURES)!r}, '--cluster', 'k8s', '--format', 'helm-values']); "
        "main(['render', " + repr(str(FEATURES)) + ", '--cluster', 'k8s']); "
        "bad = [m for m in ('torch', 'kubernetes') if m in sys.modules]; assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

"""The CLI: render prints what would be submitted, startup stays torch-free and fast, schema, validate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gemma3_launch.cli import main

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "jobspecs" / "demo_270m_lora.yaml")
LORA = str(REPO / "jobspecs" / "lora_1b.yaml")


def test_render_slurm_script(capsys):
    assert main(["render", LORA, "--cluster", "slurm"]) == 0
    script = capsys.readouterr().out
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for opt in (
        "--nodes=1",
        "--gpus-per-node=8",
        "--cpus-per-task=64",
        "--mem=400G",
        "--time=08:00:00",
        "--signal=USR2@300",
        "--requeue",
        "--open-mode=append",
        "--export=HF_TOKEN,WANDB_API_KEY",
        "--ntasks-per-node=1",
    ):
        assert f"#SBATCH {opt}" in lines, opt
    assert 'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"' in lines
    assert lines[-1].startswith("srun ") and " python3 -u -m submitit.core._submit " in lines[-1]
    assert "# secrets (by name, from the submitting environment): HF_TOKEN, WANDB_API_KEY" in lines


def test_render_multi_node_shows_torchrun_with_slurm_rendezvous(capsys):
    assert main(["render", str(REPO / "jobspecs" / "pretrain_1b.yaml"), "--cluster", "slurm"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --nodes=2" in out and "#SBATCH --exclusive" in out
    assert (
        "#     torchrun --nnodes=2 --nproc-per-node=8 -m gemma3_launch.jobwrap rank gemma3_runtime.cli.main run" in out
    )
    assert "#     srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=64 --gpus-per-node=8 " in out


def test_render_local_and_plan_formats(capsys):
    assert main(["render", DEMO, "--cluster", "local"]) == 0
    out = capsys.readouterr().out
    assert "-m gemma3_launch.jobwrap job" in out and "generate_before" in out
    assert main(["render", DEMO, "--cluster", "local", "--format", "plan"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in plan["steps"]][-1] == "generate_after"


def test_render_k8s_uses_the_k8s_renderer(capsys):
    assert main(["render", LORA, "--cluster", "k8s"]) == 0
    out = capsys.readouterr().out
    assert "kind: TrainingRuntime" in out and "kind: TrainJob" in out  # Kubeflow Trainer v2 by default
    assert main(["render", LORA, "--cluster", "k8s", "--set", "k8s.api=pytorchjob"]) == 0
    assert "kind: PyTorchJob" in capsys.readouterr().out


def test_helm_values_needs_k8s(capsys):
    assert main(["render", LORA, "--cluster", "slurm", "--format", "helm-values"]) == 2
    assert "--format helm-values" in capsys.readouterr().err


def test_dry_run_submits_and_records_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert main(["submit", DEMO, "--cluster", "local", "--dry-run"]) == 0
    assert "jobwrap job" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_validate_and_schema(capsys):
    assert main(["validate", DEMO]) == 0
    assert capsys.readouterr().out.startswith("ok: demo-270m-lora (finetune) on slurm and k8s: 5 step(s)")
    assert main(["validate", DEMO, "--cluster", "local"]) == 0
    assert capsys.readouterr().out.startswith("ok: demo-270m-lora (finetune) on local: 5 step(s)")
    assert (
        main(
            [
                "validate",
                str(REPO / "jobspecs" / "pretrain_1b.yaml"),
                "--cluster",
                "local",
                "--set",
                "resources.gpus_per_node=0",
            ]
        )
        == 2
    )
    assert "resources.nodes" in capsys.readouterr().err
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False and "resources" in schema["properties"]


def test_unknown_job_is_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert main(["status", "no-such-job"]) == 2
    assert "job: no job 'no-such-job'" in capsys.readouterr().err


def test_missing_secret_in_submitting_env_is_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    rc = main(["submit", str(REPO / "jobspecs" / "import_1b.yaml"), "--cluster", "slurm", "--set", "runs_dir=./runs"])
    assert rc == 2 and "secrets.HF_TOKEN" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv", [["--help"], ["render", DEMO, "--cluster", "slurm"], ["render", DEMO, "--cluster", "k8s"]]
)
def test_cli_imports_no_torch(argv):
    """--help and render stay torch-free (the < 0.5 s start is measured by bench/launcher.py, not asserted here:
    wall time on a shared 2-core machine is noise)."""
    code = (
        "import sys, time; t=time.perf_counter(); from gemma3_launch.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "heavy = ('torch', 'megatron', 'transformers', 'gemma3_runtime')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print('BAD', bad, file=sys.stderr) if bad else None\nsys.exit(3 if bad else 0)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "launcher"))
    res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr

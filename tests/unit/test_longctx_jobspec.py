"""jobspecs/longctx_4b_lora.yaml (issue #21): the 4B LoRA at 131,072 tokens on 2 nodes x 8 GPUs with context
parallelism 8 validates, renders for SLURM and Kubernetes with the CP settings in the command that runs, and the
launcher's validation applies the CP checks with nodes x GPUs as the world size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemma3_launch.cli import main
from gemma3_launch.loader import load_spec
from gemma3_launch.plan import Cluster, make_plan
from gemma3_runtime.training.run_args import validate_run_argv
from gemma3_runtime.training.validate import data_parallel_size

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SPEC = str(REPO / "jobspecs" / "longctx_4b_lora.yaml")
CP_ARGS = ("data.seq_length=131072", "parallelism.context_parallel_size=8")


@pytest.fixture(autouse=True)
def _state(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("RUNS_ROOT", str(tmp_path / "runs"))


@pytest.mark.parametrize("backend", ["slurm", "k8s"])
def test_the_train_step_runs_cp8_on_sixteen_gpus(backend):
    plan = make_plan(load_spec(SPEC, environ={}), Cluster(backend))
    assert [s.name for s in plan.steps] == ["import", "train", "export"]
    train = plan.steps[1]
    assert train.world_size == 16 and set(CP_ARGS) <= set(train.args)
    cfg = validate_run_argv(train.args[1:], world_size=train.world_size)
    assert (cfg.data.seq_length, cfg.parallelism.context_parallel_size, cfg.peft.kind) == (131072, 8, "lora")
    assert data_parallel_size(cfg, train.world_size) == 2


def test_it_validates_and_renders_for_slurm(capsys):
    assert main(["validate", SPEC]) == 0
    assert capsys.readouterr().out.startswith("ok: longctx-4b-lora (finetune)")
    assert main(["render", SPEC, "--cluster", "slurm"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --nodes=2" in script
    torchrun = [line for line in script.splitlines() if "torchrun --nnodes=2 --nproc-per-node=8" in line]
    assert len(torchrun) == 1 and all(arg in torchrun[0] for arg in CP_ARGS)


@pytest.mark.parametrize("api", ["pytorchjob", "trainjob"])
def test_it_renders_for_kubernetes(capsys, api):
    assert main(["render", SPEC, "--cluster", "k8s", "--set", f"k8s.api={api}"]) == 0
    manifest = capsys.readouterr().out
    assert all(arg in manifest for arg in CP_ARGS)
    assert "--nnodes=2" in manifest and "--nproc-per-node=8" in manifest


@pytest.mark.parametrize(
    "setting, message",
    [
        ("resources.gpus_per_node=6", "tensor x pipeline x context = 1 x 1 x 8 = 8 does not divide the world size 12"),
        ("resources.nodes=3", "train.global_batch_size=16 is not divisible by train.micro_batch_size x data-parallel"),
    ],
)
def test_a_layout_the_job_would_refuse_is_refused_on_the_login_node(capsys, setting, message):
    assert main(["validate", SPEC, "--set", setting]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"gemma3-launch validate: error: {SPEC}: train step: ") and message in err


def test_plan_format_lists_the_cp_overrides(capsys):
    assert main(["render", SPEC, "--cluster", "slurm", "--format", "plan"]) == 0
    plan = json.loads(capsys.readouterr().out)
    train = next(step for step in plan["steps"] if step["name"] == "train")
    assert set(CP_ARGS) <= set(train["args"])

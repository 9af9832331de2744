"""A single-process step (import, export, generate) of a multi-node job runs as a world of ONE under either operator's
injected distributed environment, while the pod's entrypoint keeps the operator's variables for the multi-node
steps. The end-to-end test runs the job side's real single-process step (`convert import` of a tiny Gemma 3) through
the job wrapper with each operator's variables set, as the pod would have them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from k8s_helpers import REPO, k8s_plan

from gemma3_launch.operator_env import operator_vars, single_process_env
from gemma3_launch.plan import Cluster, Step, replace_steps

pytestmark = pytest.mark.k8s
#: 10.255.255.1 is routable nowhere: a step that tried to meet the operator's master would hang, not fail fast.
UNREACHABLE = "10.255.255.1"
#: What each operator injects into every pod of a 2-node x 8-GPU job (this pod: node 1), plus what our entrypoint
#: exports from it (GEMMA3_NODE_RANK, and MASTER_* under Trainer v2).
OPERATOR_ENV = {
    "pytorchjob": {
        "RANK": "1",
        "WORLD_SIZE": "16",
        "MASTER_ADDR": UNREACHABLE,
        "MASTER_PORT": "23456",
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "8",
        "PET_NODE_RANK": "1",
        "PET_MASTER_ADDR": UNREACHABLE,
        "PET_MASTER_PORT": "23456",
        "GEMMA3_NODE_RANK": "1",
    },
    "trainjob": {
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "8",
        "PET_NODE_RANK": "1",
        "PET_MASTER_ADDR": UNREACHABLE,
        "PET_MASTER_PORT": "29400",
        "GEMMA3_NODE_RANK": "1",
        "MASTER_ADDR": UNREACHABLE,
        "MASTER_PORT": "29400",
        "TORCHELASTIC_RUN_ID": "job",
    },
}


@pytest.mark.parametrize("operator", sorted(OPERATOR_ENV))
def test_single_process_env_is_a_world_of_one(operator: str) -> None:
    injected = {**OPERATOR_ENV[operator], "HOME": "/root", "NCCL_DEBUG": "WARN", "PETS": "kept"}
    env = single_process_env(injected)
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == ("0", "0", "1", "1")
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] not in ("23456", "29400")
    assert not [name for name in env if name.startswith(("PET_", "TORCHELASTIC_")) or name == "GEMMA3_NODE_RANK"]
    assert (env["HOME"], env["NCCL_DEBUG"], env["PETS"]) == ("/root", "WARN", "kept")  # the rest is untouched
    assert set(operator_vars(injected)) == set(OPERATOR_ENV[operator])


@pytest.fixture(scope="module")
def tiny_hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_helpers import hf_model, tiny_config

    path = tmp_path_factory.mktemp("tiny") / "hf"
    hf_model(tiny_config(num_layers=2)).save_pretrained(str(path))
    return path


@pytest.mark.parametrize("operator", sorted(OPERATOR_ENV))
def test_single_process_step_sees_world_size_one_under_the_operator(
    operator: str, tiny_hf_model: Path, tmp_path: Path
) -> None:
    plan = k8s_plan(REPO / "jobspecs" / "import_1b.yaml", runs_dir=str(tmp_path / "runs"), **{"k8s.api": operator})
    args = ("convert", "import", "--hf-model", str(tiny_hf_model), "--megatron-path", str(tmp_path / "out"))
    plan = replace_steps(plan, (Step("import", (*args, "--device", "cpu")),), Cluster("local", python=sys.executable))
    run_dir = Path(plan.run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "plan.json").write_text(json.dumps(plan.to_dict()))
    result = subprocess.run(
        [sys.executable, "-m", "gemma3_launch.jobwrap", "node", str(run_dir), "0"],
        env={**os.environ, **OPERATOR_ENV[operator]},
        capture_output=True,
        text=True,
        timeout=300,  # a step that waited for the operator's 16 ranks would run into this
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "distributed: rank 0/1," in output
    assert (tmp_path / "out" / "latest_checkpointed_iteration.txt").exists()

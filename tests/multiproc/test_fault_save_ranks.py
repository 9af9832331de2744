"""A 2-rank checkpoint save whose commit (rank 0 alone) hits a full disk: every rank raises the same one-line
StorageFullError (none waits forever on the others), and the tracker still names the previous iteration."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from procs import free_port

from gemma3_runtime.checkpoint.layout import read_tracker

pytestmark = [pytest.mark.unit, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_rank0_commit_on_a_full_disk_fails_every_rank_alike(tmp_path):
    save, out = tmp_path / "ck", tmp_path / "out"
    out.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--nnodes=1",
        f"--master-port={free_port()}",
        "--master-addr=127.0.0.1",
        str(REPO / "tests" / "multiproc" / "run_function.py"),
        "fault_save_worker:rank0_commit_fails",
        json.dumps({"save_dir": str(save), "out_dir": str(out)}),
    ]
    path = os.pathsep.join([str(REPO / "tests" / "multiproc"), str(REPO / "runtime"), str(REPO / "launcher")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    raised = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert raised[0] == raised[1] and raised[0]["type"] == "StorageFullError", raised
    message = raised[0]["message"]
    assert str(save) in message and "iteration 1 is still the latest checkpoint" in message and "\n" not in message
    assert read_tracker(save) == 1
    assert [p.name for p in save.iterdir() if ".tmp-" in p.name] == []

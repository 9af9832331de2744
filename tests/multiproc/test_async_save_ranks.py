"""checkpoint.async_save with 2 ranks (torchrun, gloo, TP 2 so each rank writes its own shards): every background
save is committed once both ranks' writers finished, and the checkpoints hold the same tensors as a synchronous
2-rank run's."""

import sys

import pytest
from procs import free_port
from train_helpers import assert_same_tensors, checkpoint_tensors, run_cli_args, run_subprocess, step_losses

from gemma3_runtime.checkpoint.layout import read_tracker

pytestmark = [pytest.mark.unit, pytest.mark.slow]

ITERS = 4


def _torchrun(save, extra):
    args = run_cli_args(save, ITERS, ["parallelism.tensor_model_parallel_size=2", "checkpoint.save_interval=2", *extra])
    module_args = args[args.index("-m") + 1 :]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--nnodes=1",
        f"--master-port={free_port()}",
        "--master-addr=127.0.0.1",
        "-m",
        *module_args,
    ]


def test_two_ranks_commit_background_saves_equal_to_synchronous_ones(tmp_path):
    sync, background = tmp_path / "sync", tmp_path / "async"
    for save, extra in ((sync, []), (background, ["checkpoint.async_save=true"])):
        proc = run_subprocess(_torchrun(save, extra), timeout=900)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    output = proc.stdout + proc.stderr
    assert output.count("the write goes on in the background") == 2 and output.count("committed") >= 2
    assert read_tracker(background) == ITERS
    assert sorted(p.name for p in background.iterdir() if p.name.startswith("iter_")) == [
        "iter_0000002",
        "iter_0000004",
    ]
    assert step_losses(background) == step_losses(sync)
    assert_same_tensors(checkpoint_tensors(background), checkpoint_tensors(sync))
    assert_same_tensors(checkpoint_tensors(background / "iter_0000002"), checkpoint_tensors(sync / "iter_0000002"))

"""checkpoint.async_save on CUDA (the path CI cannot run: device tensors copied to pinned host memory, the writer
forked from a process holding a CUDA context, the finalize over NCCL): bf16 + fp32 main weights with megatron's
distributed optimizer, background saves every 2 steps, stopped at 3 and resumed, ends with the per-step losses and
the final weights and optimizer state of a run that saves synchronously."""

import subprocess

import pytest
import torch
from train_helpers import REPO, assert_same_tensors, checkpoint_tensors, run_cli_args, runtime_env, step_losses

pytestmark = pytest.mark.gpu

EXTRA = [
    "data.seq_length=64",
    "train.global_batch_size=8",
    "train.precision=bf16-mixed",
    "optimizer.use_distributed_optimizer=true",
    "checkpoint.save_interval=2",
]


def _run(save, extra):
    if not torch.cuda.is_available():
        pytest.fail("the GPU tier needs a CUDA GPU (none visible)")
    args = run_cli_args(save, 6, [*EXTRA, *extra])
    args[args.index("--device") + 1] = "cuda"
    env = runtime_env()
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env, cwd=str(REPO))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def test_async_saves_on_cuda_resume_exactly(tmp_path):
    _run(tmp_path / "sync", [])
    first = _run(tmp_path / "async", ["checkpoint.async_save=true", "train.exit_interval=3"])
    assert "the write goes on in the background" in first and "committed" in first
    resumed = _run(tmp_path / "async", ["checkpoint.async_save=true"])
    assert "resumed at iteration 3" in resumed
    assert step_losses(tmp_path / "async") == step_losses(tmp_path / "sync")
    assert_same_tensors(checkpoint_tensors(tmp_path / "async"), checkpoint_tensors(tmp_path / "sync"))

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


def _sharded_leaves(state: dict) -> dict:
    from megatron.core.dist_checkpointing.dict_utils import nested_values

    return {leaf.key: leaf for leaf in nested_values(state) if hasattr(leaf, "key")}


def test_async_saves_take_the_optimizer_state_in_place_exactly_as_megatron_builds_it(tmp_path):
    """The in-place optimizer state (what an asynchronous save writes with one data-parallel rank) must apply to the
    Trainer's real megatron optimizer - get_megatron_optimizer wraps it in a ChainedOptimizer - and equal megatron's
    own fully_reshardable state: keys, shapes, dtypes, replica ids and values."""
    from train_helpers import tiny_pretrain_cfg

    from gemma3_runtime.loader import sharded_model_state
    from gemma3_runtime.training.checkpointing import distributed_optimizer_state_in_place
    from gemma3_runtime.training.trainer import Trainer

    if not torch.cuda.is_available():
        pytest.fail("the GPU tier needs a CUDA GPU (none visible)")
    overrides = {"train.precision": "bf16-mixed", "optimizer.use_distributed_optimizer": "true"}
    cfg = tiny_pretrain_cfg(tmp_path, train_iters=4, gbs=8, seq=64, **overrides)
    cfg.train.device = "cuda"
    trainer = Trainer(cfg)
    try:
        trainer.build()
        for _ in range(2):  # Adam's states exist and differ from their initial values
            trainer.train_step().resolve()
        model_sd = sharded_model_state(trainer.models, trainer.adapters_only)
        in_place = distributed_optimizer_state_in_place(trainer.optimizer, model_sd)
        assert in_place is not None, "the in-place state did not apply to the Trainer's optimizer"
        megatrons = trainer.optimizer.sharded_state_dict(model_sd)
        assert sorted(in_place) == sorted(megatrons)
        assert in_place["param_state_sharding_type"] == megatrons["param_state_sharding_type"]
        ours, theirs = _sharded_leaves(in_place["param_state"]), _sharded_leaves(megatrons["param_state"])
        assert sorted(ours) == sorted(theirs) and len(ours) > 0
        for key, mine in ours.items():
            other = theirs[key]
            for field in ("global_shape", "global_offset", "replica_id", "dtype"):
                assert getattr(mine, field, None) == getattr(other, field, None), (key, field)
            assert torch.equal(mine.data.cpu(), other.data.cpu()), key
    finally:
        trainer.close()

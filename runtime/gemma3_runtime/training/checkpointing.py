"""Training checkpoints: model (or adapters only) + optimizer + RNG + train state, through checkpoint/io.py.

One sharded state dict per save, written with megatron dist_checkpointing (torch_dist) and committed by the
tracker rename (checkpoint/io.py). Contents:
- model tensors under their megatron names (docs/CONTRACTS.md) - for a PEFT run only the `.adapter.` tensors;
- `optimizer.state.<exp_avg|exp_avg_sq>.<param name>` sharded like the parameter (reshards across TP/PP);
- `rng_state`: one object per global rank (restored only when the world size is unchanged);
- `train_state`: iteration, consumed samples (the data position), loss history (common state, rank 0).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gemma3_runtime.checkpoint import io as ckpt_io
from gemma3_runtime.checkpoint.layout import ResolvedCheckpoint, read_tracker, resolve_checkpoint
from gemma3_runtime.loader import copy_model_tensors, sharded_model_state
from gemma3_runtime.training.state import TrainState, get_rng_state, set_rng_state

if TYPE_CHECKING:
    from gemma3_runtime.checkpoint.async_save import AsyncCheckpointSaver

log = logging.getLogger("gemma3_runtime.training")

TRAIN_STATE_KEY = "train_state"
RNG_KEY = "rng_state"


def _rng_sharded_object(is_loading: bool) -> Any:
    from megatron.core.dist_checkpointing import ShardedObject

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return ShardedObject(RNG_KEY, None if is_loading else get_rng_state(), (world,), (rank,), replica_id=0)


def save_training_checkpoint(
    save_dir: str | Path,
    models: list,
    optimizer: Any,
    train_state: TrainState,
    run_config: dict[str, Any],
    adapters_only: bool,
    save_optim: bool,
    save_rng: bool,
    tokenizer_dir: str | Path | None,
    saver: AsyncCheckpointSaver | None = None,
) -> Path:
    """Collective: every rank calls it. Returns the committed iteration directory, or with `saver`
    (checkpoint.async_save) the one it will be committed as once the background write is done (`saver.poll/wait`)."""
    model_sd = sharded_model_state(models, adapters_only)
    state: dict[str, Any] = dict(model_sd)
    if save_optim:
        in_place = distributed_optimizer_state_in_place(optimizer, model_sd) if saver is not None else None
        state["optimizer"] = in_place if in_place is not None else optimizer.sharded_state_dict(model_sd)
    if save_rng:
        state[RNG_KEY] = _rng_sharded_object(is_loading=False)
    state[TRAIN_STATE_KEY] = train_state.to_dict()
    if saver is not None:
        return saver.start(save_dir, train_state.iteration, state, run_config, tokenizer_dir=tokenizer_dir)
    return ckpt_io.save_checkpoint(save_dir, train_state.iteration, state, run_config, tokenizer_dir=tokenizer_dir)


def distributed_optimizer_state_in_place(optimizer: Any, model_sd: dict) -> dict | None:
    """megatron's DistributedOptimizer state in its `fully_reshardable` format, for ONE data-parallel rank, built
    from the optimizer's own tensors instead of megatron's gather; None where it does not apply (any other
    optimizer, data-parallel size > 1, chained or precision-aware optimizers), and the caller uses megatron's.

    WHY: megatron-core 0.16.1 builds that format by copying every state to host memory, into zeroed buffers, back
    to the device for an all-gather and to the host again - seconds of the loop for a 1B, although with one
    data-parallel rank each parameter's fp32 main copy, exp_avg and exp_avg_sq already ARE the tensors it saves.
    Used for asynchronous saves, whose preload copies them to host memory at the save; the same keys, shapes,
    dtypes and replica ids as megatron's (megatron's `sharded_param_state_fully_reshardable`, the `param_idx` order
    of its buffers' `param_index_map`), so the checkpoint loads through megatron's own path
    (tests/gpu/test_async_save_gpu.py compares such a checkpoint with a synchronous one tensor by tensor)."""
    from dataclasses import replace

    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory
    from megatron.core.dist_checkpointing.utils import extract_sharded_tensors_and_factories
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    from gemma3_runtime.perf.optim import megatron_parts

    # a ChainedOptimizer of ONE part saves that part's own sharded state dict: unwrap exactly one
    parts = megatron_parts(getattr(optimizer, "optimizer", None))
    inner = parts[0] if len(parts) == 1 else None
    if not isinstance(inner, DistributedOptimizer) or inner.data_parallel_group.size() != 1:
        return None
    if inner.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8 or inner.ddp_config.use_megatron_fsdp:
        return None
    state_dict = inner.state_dict()
    tensors_of, _ = extract_sharded_tensors_and_factories(model_sd)
    metadata = {sh.data: sh for sh in nested_values(tensors_of)}
    param_state: dict[int, dict[str, Any]] = {}
    for gbuf_idx, gbuf_range_maps in enumerate(inner.gbuf_ranges):
        if len(gbuf_range_maps) != 1:
            return None
        for model_param in inner.buffers[gbuf_idx].param_index_map:
            sharded = metadata[model_param]
            if sharded.flattened_range is not None:
                return None
            states = inner._get_main_param_and_optimizer_states(model_param)
            entry = {}
            for key in ("param", "exp_avg", "exp_avg_sq"):
                tensor = states[key].detach().reshape(sharded.data.shape)
                fields = dict(key=f"optimizer.state.{key}.{sharded.key}", data=tensor, replica_id=sharded.replica_id)
                if not isinstance(sharded, ShardedTensorFactory):
                    fields["dtype"] = tensor.dtype
                entry[key] = replace(sharded, **fields)
                entry[key].validate_metadata_integrity()
            param_state[len(param_state)] = entry
    state_dict["param_state"] = param_state
    state_dict["param_state_sharding_type"] = "fully_reshardable"
    return state_dict


def save_trainer(trainer: Any, blocking: bool) -> Path | None:
    """`Trainer.save`: a checkpoint of the trainer's current state; None without a save dir. With
    checkpoint.async_save the loop goes on while it is written, unless `blocking` (then it is committed on return)."""
    import time

    if not trainer.save_dir:
        return None
    ckpt = trainer.cfg.checkpoint
    if ckpt.async_save and trainer.saver is None:
        from gemma3_runtime.checkpoint.async_save import AsyncCheckpointSaver

        trainer.saver = AsyncCheckpointSaver()
    saver = trainer.saver if ckpt.async_save else None
    started = time.time()
    path = save_training_checkpoint(
        trainer.save_dir,
        trainer.models,
        trainer.optimizer,
        trainer.train_state,
        trainer.run_config,
        trainer.adapters_only,
        ckpt.save_optim,
        ckpt.save_rng,
        trainer.tokenizer_dir,
        saver=saver,
    )
    blocked = time.time() - started  # the loop's wait; the rest of an asynchronous save is written meanwhile
    if saver is not None and blocking:
        saver.wait()
    if trainer.is_rank0:
        if saver is None or blocking:
            log.info("saved %s in %.1f s", path, time.time() - started)
        else:
            log.info("saving %s: the loop was blocked %.2f s, the write goes on in the background", path, blocked)
    return path


def find_resume_checkpoint(load_dir: str | None) -> ResolvedCheckpoint | None:
    """The committed checkpoint in `load_dir`, or None when there is none yet (a fresh run)."""
    if not load_dir or not Path(load_dir).is_dir() or read_tracker(Path(load_dir)) is None:
        return None
    return resolve_checkpoint(load_dir)


def load_training_checkpoint(
    resolved: ResolvedCheckpoint, models: list, optimizer: Any, adapters_only: bool, load_optim: bool = True
) -> TrainState:
    """Restore model (or adapters), optimizer, RNG (same world size only) and train state, in place."""
    from megatron.core.dist_checkpointing import load_common_state_dict

    common = load_common_state_dict(str(resolved.iter_dir))
    saved_state = TrainState.from_dict(common.get(TRAIN_STATE_KEY, {}))
    model_sd = sharded_model_state(models, adapters_only)
    request: dict[str, Any] = dict(model_sd)
    if load_optim and optimizer is not None:
        request["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=True)
    same_world = saved_state.world_size == torch.distributed.get_world_size()
    if same_world:
        request[RNG_KEY] = _rng_sharded_object(is_loading=True)
    else:
        log.warning(
            "checkpoint was written by %d ranks, this run has %d: RNG states are not restored",
            saved_state.world_size,
            torch.distributed.get_world_size(),
        )
    loaded = ckpt_io.load_checkpoint(resolved.iter_dir, request, strict=True)
    copy_model_tensors(models, {k: loaded[k] for k in model_sd if k in loaded}, adapters_only)
    if "optimizer" in request:
        optimizer.load_state_dict(loaded["optimizer"])
    if same_world and loaded.get(RNG_KEY) is not None:
        set_rng_state(loaded[RNG_KEY])
    return saved_state

"""A built Megatron Gemma 3 model <-> a Megatron checkpoint directory (what `convert` and generation use)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gemma3_runtime.bridge.engine import unwrap
from gemma3_runtime.checkpoint.io import load_checkpoint, save_checkpoint
from gemma3_runtime.checkpoint.layout import ResolvedCheckpoint, resolve_checkpoint
from gemma3_runtime.errors import UserInputError
from gemma3_runtime.model.config import Gemma3Config, Gemma3ConfigError

log = logging.getLogger(__name__)


@contextmanager
def building_on_cpu(device: str | None, pp: int) -> Iterator[None]:
    """megatron-core's GPTModel calls `.cuda()` on the last stage's tied output weight when PP > 1; on a CPU-only
    build that must be a no-op while the model is built (compat.megatron_cpu.tensor_cuda_is_identity)."""
    if pp == 1 or torch.cuda.is_available() or device == "cuda":
        yield
        return
    from gemma3_runtime.compat.megatron_cpu import tensor_cuda_is_identity

    with tensor_cuda_is_identity():
        yield


def model_sharded_state_dict(models: Sequence[nn.Module]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for model in models:
        state.update(unwrap(model).sharded_state_dict())
    return state


def save_megatron_model(
    models: Sequence[nn.Module],
    save_dir: str | Path,
    config: Gemma3Config,
    tokenizer_dir: str | Path | None = None,
    iteration: int = 0,
    extra_run_config: dict[str, Any] | None = None,
) -> Path:
    """Model weights only (no optimizer / RNG state), as `iter_NNNNNNN` with the commit protocol; collective."""
    run_config = {"model": config.to_dict(), **(extra_run_config or {})}
    return save_checkpoint(save_dir, iteration, model_sharded_state_dict(models), run_config, tokenizer_dir)


def checkpoint_config(resolved: ResolvedCheckpoint) -> Gemma3Config:
    try:
        return Gemma3Config.from_dict(
            resolved.run_config["model"], source=f"{resolved.iter_dir / 'run_config.yaml'} model"
        )
    except Gemma3ConfigError as exc:
        raise UserInputError(str(exc)) from None


def checkpoint_dtype(resolved: ResolvedCheckpoint) -> torch.dtype:
    """The dtype the checkpoint's weights were saved in (the embedding's, from the torch_dist metadata)."""
    from megatron.core import dist_checkpointing

    metadata = dist_checkpointing.load_tensors_metadata(str(resolved.iter_dir))
    embedding = metadata.get("embedding.word_embeddings.weight")
    if embedding is None:
        raise UserInputError(f"{resolved.iter_dir}: no embedding.word_embeddings.weight in the checkpoint")
    return embedding.dtype


def load_megatron_model(
    path: str | Path,
    tp: int = 1,
    pp: int = 1,
    device: str | None = None,
    strict: bool = True,
    params_dtype: torch.dtype | None = None,
) -> tuple[list[nn.Module], Gemma3Config, ResolvedCheckpoint]:
    """Build the model the checkpoint describes at the given TP/PP (any: torch_dist reshards) and load it."""
    from gemma3_runtime.model.provider import Gemma3ModelProvider

    resolved = resolve_checkpoint(path)
    if resolved.run_config.get("peft") is not None:  # adapter-only LoRA/DoRA run: its base + adapters, merged
        from gemma3_runtime.peft.checkpoint import load_merged_peft_model

        return load_merged_peft_model(resolved.iter_dir, tp=tp, pp=pp, device=device)
    config = checkpoint_config(resolved)
    provider = Gemma3ModelProvider.from_config(
        config,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        device=device,
        params_dtype=params_dtype or checkpoint_dtype(resolved),
        perform_initialization=False,
    )
    try:
        provider.finalize()
    except ValueError as exc:
        raise UserInputError(f"--tp/--pp: {exc}") from None
    with building_on_cpu(device, pp):
        models = provider.provide_distributed_model(wrap_with_ddp=False)
    sharded = model_sharded_state_dict(models)
    state = load_checkpoint(resolved.iter_dir, sharded, strict=strict)
    for model in models:
        model = unwrap(model)
        own = {k: v for k, v in state.items() if k in model.state_dict()}
        result = model.load_state_dict(own, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
        if missing and strict:
            raise UserInputError(f"{resolved.iter_dir}: the checkpoint lacks {missing[:3]}")
    return models, config, resolved

"""Checkpoint -> model: the one owner of resolving, building, loading base weights, attaching adapters and merging.

Training (pretrained base weights, resume), PEFT, `convert export` and generation all come through here:
- `checkpoint_model_config` / `checkpoint_peft_config` / `base_checkpoint_of` read a checkpoint's run_config.yaml;
- `build_model` builds the model a Gemma3Config describes at a TP/PP layout (empty weights);
- `sharded_model_state` is the request a model makes of a checkpoint (all tensors, or the adapters only);
- `load_base_weights` / `load_adapters` copy tensors from a checkpoint into built models, in place;
- `load_model` composes them: the model a checkpoint holds - full weights, or a PEFT run's base + its adapters,
  merged exactly unless asked not to.
A checkpoint is resharded on load (torch_dist), so any TP/PP layout loads any checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gemma3_runtime.checkpoint.io import load_checkpoint
from gemma3_runtime.checkpoint.layout import RUN_CONFIG_FILE, ResolvedCheckpoint, resolve_checkpoint
from gemma3_runtime.errors import UserInputError
from gemma3_runtime.model.config import Gemma3Config
from gemma3_runtime.model.wrapping import unwrap
from gemma3_runtime.peft.config import PeftConfig


# ---- what a checkpoint says about itself (its run_config.yaml) ---------------------------------------------------
def checkpoint_model_config(resolved: ResolvedCheckpoint, field: str | None = None) -> Gemma3Config:
    """The Gemma3Config the checkpoint was written with; `field` names the setting that pointed here (errors)."""
    where = f"{resolved.iter_dir / RUN_CONFIG_FILE} model"
    try:
        return Gemma3Config.from_dict(resolved.run_config["model"], where)
    except ValueError as exc:
        message = " ".join(str(exc).split())
        raise UserInputError(f"{field}: {message}" if field else message) from None


def checkpoint_peft_config(resolved: ResolvedCheckpoint) -> PeftConfig | None:
    """The run's PeftConfig, or None for a checkpoint of full weights."""
    section = resolved.run_config.get("peft")
    if section is None:
        return None
    where = resolved.iter_dir / RUN_CONFIG_FILE
    if not isinstance(section, dict):
        raise UserInputError(f"{where}: peft: expected a mapping of PEFT fields, got {type(section).__name__}")
    try:
        return PeftConfig.from_dict(section)
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"{where}: peft section: {exc}") from None


def base_checkpoint_of(resolved: ResolvedCheckpoint) -> ResolvedCheckpoint:
    """Where a PEFT run's frozen base weights are (its `checkpoint.pretrained_checkpoint`)."""
    where = resolved.iter_dir / RUN_CONFIG_FILE
    path = (resolved.run_config.get("checkpoint") or {}).get("pretrained_checkpoint")
    if not path:
        raise UserInputError(f"{where}: a PEFT checkpoint without checkpoint.pretrained_checkpoint (its base weights)")
    if not Path(path).exists():
        raise UserInputError(
            f"{where}: checkpoint.pretrained_checkpoint {path!r} does not exist (the PEFT run's base "
            f"weights; run from the directory the training ran in, or restore that checkpoint)"
        )
    return resolve_checkpoint(path)


def checkpoint_dtype(resolved: ResolvedCheckpoint) -> torch.dtype:
    """The dtype the checkpoint's weights were saved in (the embedding's, from the torch_dist metadata)."""
    from megatron.core import dist_checkpointing

    metadata = dist_checkpointing.load_tensors_metadata(str(resolved.iter_dir))
    embedding = metadata.get("embedding.word_embeddings.weight")
    if embedding is None:
        raise UserInputError(f"{resolved.iter_dir}: no embedding.word_embeddings.weight in the checkpoint")
    return embedding.dtype


# ---- building -------------------------------------------------------------------------------------------------------
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


def build_model(
    config: Gemma3Config, tp: int, pp: int, device: str | None, params_dtype: torch.dtype, flag: str = "--tp/--pp"
) -> list[nn.Module]:
    """This rank's model chunks for `config` at TP x PP, uninitialised (weights come from a checkpoint)."""
    from gemma3_runtime.model.provider import Gemma3ModelProvider

    provider = Gemma3ModelProvider.from_config(
        config,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        device=device,
        params_dtype=params_dtype,
        perform_initialization=False,
    )
    try:
        provider.finalize()
    except ValueError as exc:
        raise UserInputError(f"{flag}: {exc}") from None
    with building_on_cpu(device, pp):
        return provider.provide_distributed_model(wrap_with_ddp=False)


# ---- loading tensors into built models ----------------------------------------------------------------------------
def sharded_model_state(models: Sequence[nn.Module], adapters_only: bool = False) -> dict[str, Any]:
    """The sharded state dict the models ask a checkpoint for: every tensor, or only the LoRA/DoRA adapters."""
    state: dict[str, Any] = {}
    for model in models:
        inner = unwrap(model)
        if adapters_only:
            from gemma3_runtime.peft.state import adapter_sharded_state_dict

            state.update(adapter_sharded_state_dict(inner))
        else:
            state.update(inner.sharded_state_dict())
    return state


def copy_model_tensors(models: Sequence[nn.Module], loaded: dict[str, Any], adapters_only: bool = False) -> None:
    """Copy the loaded tensors into the models' own parameters and buffers, in place."""
    tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if adapters_only:
        from gemma3_runtime.peft.state import load_adapter_state_dict

        load_adapter_state_dict([unwrap(m) for m in models], tensors)
        return
    for model in models:
        own = unwrap(model).state_dict(keep_vars=True)
        with torch.no_grad():
            for key, value in tensors.items():
                if key in own:
                    own[key].copy_(value)


def load_base_weights(resolved: ResolvedCheckpoint, models: Sequence[nn.Module], strict: bool = True) -> None:
    """Every non-adapter tensor of the models from the checkpoint (a strict load fails on any missing tensor)."""
    request = {k: v for k, v in sharded_model_state(models).items() if ".adapter." not in k}
    loaded = load_checkpoint(resolved.iter_dir, request, strict=strict)
    if strict:
        missing = [k for k, v in request.items() if not k.endswith("_extra_state") and k not in loaded]
        if missing:
            raise UserInputError(f"{resolved.iter_dir}: the checkpoint lacks {missing[:3]}")
    copy_model_tensors(models, loaded)


def load_adapters(resolved: ResolvedCheckpoint, models: Sequence[nn.Module], peft: PeftConfig) -> None:
    """Wrap the models' linears with the run's adapters and load their trained tensors from the checkpoint."""
    from gemma3_runtime.peft.apply import apply_peft

    apply_peft(list(models), peft)
    request = sharded_model_state(models, adapters_only=True)
    loaded = load_checkpoint(resolved.iter_dir, request, strict=True)
    copy_model_tensors(models, {k: loaded[k] for k in request}, adapters_only=True)


def load_model(
    path: str | Path,
    tp: int = 1,
    pp: int = 1,
    device: str | None = None,
    strict: bool = True,
    params_dtype: torch.dtype | None = None,
    merge: bool = True,
) -> tuple[list[nn.Module], Gemma3Config, ResolvedCheckpoint, PeftConfig | None]:
    """(model chunks, Gemma3Config, resolved checkpoint, PeftConfig or None) for the model a checkpoint holds.

    A PEFT run's checkpoint holds adapters only: its base comes from the run's pretrained checkpoint, the adapters
    are attached and loaded, then merged exactly into the base weights unless `merge` is False. Collective.
    """
    resolved = resolve_checkpoint(path)
    peft = checkpoint_peft_config(resolved)
    weights = base_checkpoint_of(resolved) if peft is not None else resolved
    config = checkpoint_model_config(weights)
    models = build_model(config, tp, pp, device, params_dtype or checkpoint_dtype(weights))
    load_base_weights(weights, models, strict=strict or peft is not None)
    if peft is not None:
        load_adapters(resolved, models, peft)
        if merge:
            from gemma3_runtime.peft.apply import merge_peft

            merge_peft(models)
    return models, config, resolved, peft

"""Adapter-only state: what a PEFT checkpoint stores (the frozen base comes from `pretrained_checkpoint`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.peft.apply import ModelOrChunks, _chunks

ADAPTER_MARKER = ".adapter."


def is_adapter_key(key: str) -> bool:
    return ADAPTER_MARKER in key


def _global_adapter_params(model: ModelOrChunks) -> dict[str, torch.nn.Parameter]:
    """Adapter parameters keyed by their GLOBAL names (layer index across pipeline stages, as in checkpoints)."""
    from gemma3_runtime.model.wrapping import megatron_params

    return {k: v for k, v in megatron_params(_chunks(model)).items() if is_adapter_key(k)}


def adapter_state_dict(model: ModelOrChunks) -> dict[str, torch.Tensor]:
    """This rank's adapter tensors (local TP shards), keyed by global parameter name."""
    return {k: v.detach() for k, v in _global_adapter_params(model).items()}


def load_adapter_state_dict(model: ModelOrChunks, state: Mapping[str, torch.Tensor]) -> None:
    """Copy adapter tensors (global names, this rank's shards) into an adapted model; every adapter key on both
    sides must match in name and shape. Non-adapter keys in `state` are ignored."""
    own = _global_adapter_params(model)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(k for k in state if is_adapter_key(k) and k not in own)
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise UserInputError(
            f"adapter checkpoint does not match the model's adapters ({what}; {len(missing)} missing, "
            f"{len(unexpected)} unexpected): check peft.kind / peft.targets / peft.rank against the checkpoint"
        )
    with torch.no_grad():
        for key, param in own.items():
            if tuple(state[key].shape) != tuple(param.shape):
                raise UserInputError(
                    f"adapter checkpoint: {key} has shape {tuple(state[key].shape)}, "
                    f"the model expects {tuple(param.shape)}"
                )
            param.copy_(state[key])


def adapter_sharded_state_dict(model: ModelOrChunks, **kwargs: Any) -> dict[str, Any]:
    """The megatron sharded state dict restricted to adapters (for `dist_checkpointing.save/load`).

    Keys carry global layer numbers (megatron's TransformerBlock applies PP offsets), and each adapter tensor is
    marked sharded / replicated like its base weight, so adapter checkpoints reshard across TP like any other.
    With several virtual-pipeline chunks the keys are prefixed `model{i}.` like megatron's own checkpoints.
    """
    chunks = _chunks(model)
    state: dict[str, Any] = {}
    for index, chunk in enumerate(chunks):
        prefix = f"model{index}." if len(chunks) > 1 else ""
        for key, value in chunk.sharded_state_dict(**kwargs).items():
            if is_adapter_key(key):
                state[prefix + key] = value
    return state


def adapter_num_parameters(model: ModelOrChunks) -> int:
    """Adapter parameters on this rank (local shards)."""
    return sum(p.numel() for chunk in _chunks(model) for n, p in chunk.named_parameters() if is_adapter_key(n))

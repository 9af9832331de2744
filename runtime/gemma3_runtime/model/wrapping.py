"""The one way to see through wrappers and name a rank's parameters globally.

`unwrap` strips megatron DDP / Float16Module-style wrappers (each keeps the real model in `.module`);
`megatron_params` names this rank's parameters with GLOBAL layer numbers (megatron's local `decoder.layers.<j>`
becomes the layer's 1-based `layer_number` - 1), the names the checkpoint and the HF mapping table use.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

_LOCAL_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.")


def unwrap(module: nn.Module) -> nn.Module:
    """The Gemma3Model inside DDP / Float16Module-style wrappers (whose state_dict keys carry a `module.` prefix)."""
    while hasattr(module, "module") and isinstance(module.module, nn.Module):
        module = module.module
    return module


def global_layer_numbers(model: nn.Module) -> dict[int, int]:
    """Local layer index -> global 0-based layer index (megatron's `layer_number` is 1-based and global)."""
    decoder = getattr(model, "decoder", None)
    layers = getattr(decoder, "layers", None) or []
    return {j: int(layer.layer_number) - 1 for j, layer in enumerate(layers)}


def megatron_params(models: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    """Global Megatron name -> this rank's local parameter, across all model chunks of this rank."""
    params: dict[str, torch.Tensor] = {}
    for chunk in models:
        model = unwrap(chunk)
        numbers = global_layer_numbers(model)
        for name, param in model.named_parameters():
            match = _LOCAL_LAYER_RE.match(name)
            if match:
                name = f"decoder.layers.{numbers[int(match.group(1))]}." + name[match.end() :]
            params[name] = param
    return params

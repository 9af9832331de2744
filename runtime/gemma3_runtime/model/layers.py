"""Gemma 3 pieces megatron-core's local spec lacks: the post-normed row-parallel linear and tanh-GELU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import RowParallelLinear

from .norm import Gemma3RMSNorm


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """HF's `gelu_pytorch_tanh` exactly (megatron's fast_gelu is the same function with a rounded constant)."""
    return F.gelu(x, approximate="tanh")


class PostNormRowParallelLinear(RowParallelLinear):
    """Row-parallel linear whose OUTPUT goes through Gemma's (1+w) RMSNorm: realises post_attention_layernorm
    (on `linear_proj`) and post_feedforward_layernorm (on `linear_fc2`) inside megatron's layer structure.

    The norm is a separate step on purpose: `forward` = `post_layernorm(linear_forward(x))`. PEFT adds its
    low-rank delta to `linear_forward(x)` BEFORE the norm, so a merged adapter computes exactly what was trained.
    """

    def __init__(self, input_size: int, output_size: int, *, config, **kwargs) -> None:
        if kwargs.get("bias"):
            raise ValueError("PostNormRowParallelLinear: Gemma 3 projections have no bias")
        super().__init__(input_size, output_size, config=config, **kwargs)
        self.post_layernorm = Gemma3RMSNorm(config=config, hidden_size=output_size, eps=config.layernorm_epsilon)

    def linear_forward(self, input_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """W x (all-reduced over TP), before the post-norm."""
        return super().forward(input_)

    def forward(self, input_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        output, bias = self.linear_forward(input_)
        return self.post_layernorm(output), bias

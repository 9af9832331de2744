"""Dual-base rotary embedding: local layers base 1e4 unscaled, global layers base 1e6 (linear-scaled on 4B+).

Frequencies are computed from `position_ids` (not from 0..s-1 as megatron's RotaryEmbedding does) so KV-cached
decoding and left-padded batches with per-row offsets get the right angles. The module returns ONE stacked tensor
[2, s, b, 1, d] (index 0 local, 1 global) rather than a tuple: megatron's full-activation recompute only passes
tensors through its checkpoint function (Megatron-Bridge PR #2390 crashed on a tuple).
"""

from __future__ import annotations

import torch
from torch import nn

LOCAL, GLOBAL = 0, 1


def _inv_freq(head_dim: int, base: float, scaling_factor: float) -> torch.Tensor:
    # same expression as HF's default rope init (int64 arange -> float) so the fp32 values are bit-identical
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype=torch.float) / head_dim
    return 1.0 / (base**exponent) / scaling_factor


class Gemma3RotaryEmbedding(nn.Module):
    """position_ids [b, s] -> angles [2, s, b, 1, head_dim] in fp32 (non-interleaved halves, HF rotate_half)."""

    def __init__(self, head_dim: int, local_base: float, global_base: float, global_scaling_factor: float = 1.0):
        super().__init__()
        self.head_dim = head_dim
        inv = torch.stack(
            [_inv_freq(head_dim, local_base, 1.0), _inv_freq(head_dim, global_base, global_scaling_factor)]
        )
        self.register_buffer("inv_freq", inv, persistent=False)  # [2, d/2]; derived, never checkpointed

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        pos = position_ids.to(device=self.inv_freq.device, dtype=torch.float32).t()  # [s, b]
        freqs = pos[None, :, :, None] * self.inv_freq.float()[:, None, None, :]  # [2, s, b, d/2]
        return torch.cat([freqs, freqs], dim=-1).unsqueeze(3)  # [2, s, b, 1, d]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """x [s, b, heads, d]; angles [s, b, 1, d] fp32. cos/sin in fp32, cast to x's dtype before use (as HF)."""
    cos = angles.cos().to(x.dtype)
    sin = angles.sin().to(x.dtype)
    return x * cos + rotate_half(x) * sin

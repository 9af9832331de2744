"""The seam between the generation engine and a model: what a Gemma 3 decoder must expose to be KV-cached.

The engine owns the cache, the masks and attention; a `Decoder` owns everything with weights (embedding, the
QKV projection with its norms and RoPE, output projection + post-norm + residual + MLP, the head). Hidden states
are opaque to the engine (Megatron keeps [s, b, h], HF [b, s, h]), only q/k/v cross the seam, as [b, heads, s, d].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class DecoderInfo:
    """Sizes the engine needs; head counts are per tensor-parallel rank, layers are the ones this rank holds."""

    sliding: tuple[bool, ...]
    window: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    softmax_scale: float
    vocab_size: int  # logits are trimmed to this (the HF vocab)
    max_positions: int  # max_position_embeddings
    dtype: torch.dtype  # activation / cache dtype
    device: torch.device


class Decoder(Protocol):
    info: DecoderInfo

    def embed(self, input_ids: torch.Tensor) -> Any:
        """input_ids [b, s] -> hidden states (decoder's own layout)."""

    def rotary(self, positions: torch.Tensor) -> Any:
        """positions [b, s] (int64) -> whatever `qkv` needs to rotate q and k (computed once per forward)."""

    def qkv(self, layer: int, hidden: Any, rotary: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> q [b, H, s, d], k [b, G, s, d], v [b, G, s, d]: normed (q/k norm) and rotated."""

    def finish_layer(self, layer: int, hidden: Any, attention: torch.Tensor) -> Any:
        """attention [b, H, s, d] -> next hidden: output projection, post-norm, residual, MLP block."""

    def logits(self, hidden: Any) -> torch.Tensor:
        """Final norm + head on the LAST position only -> [b, vocab_size], full vocabulary on every rank."""

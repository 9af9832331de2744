"""A static, preallocated KV cache that knows Gemma 3's sliding window, and the masks that go with it.

Why static: every decode step then has the same shapes and writes through an index held in a device tensor, so
the step can be captured once as a CUDA graph and replayed with no host work but the launch.

Columns: a batch shares one column counter `t` (prompts are left-padded so their last tokens align); row r's
first real token sits in column `starts[r]`, its RoPE position is `t - starts[r]`. Global layers keep every column
(S slots). Sliding layers keep only the newest min(W, S) columns in a ring (slot = column % Ws): a query at column
t may see keys t-W+1..t (W keys including itself, HF's inclusive window), and the ring holds exactly those. Which
column a ring slot holds is a function of t alone, so masks need no bookkeeping state:
    column(slot) = t - ((t - slot) mod Ws)      (negative = never written)
Keys are stored after RoPE, so their order in the ring does not matter to attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CacheSpec:
    batch: int
    columns: int  # S = padded prompt width + new tokens (rounded up)
    window: int  # W of the sliding layers
    sliding: tuple[bool, ...]  # per layer held by this rank
    kv_heads: int  # per rank
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @property
    def ring(self) -> int:
        """Slots of a sliding layer: a window never needs more than W, a short generation never more than S."""
        return min(self.window, self.columns)

    def slots(self, layer: int) -> int:
        return self.ring if self.sliding[layer] else self.columns

    def nbytes(self) -> int:
        per_slot = 2 * self.batch * self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8
        return sum(self.slots(i) for i in range(len(self.sliding))) * per_slot


class StaticKVCache:
    """Per layer K and V of shape [b, G, slots, d], zero-filled (never NaN: masked slots still meet a matmul)."""

    def __init__(self, spec: CacheSpec) -> None:
        self.spec = spec
        shapes = [(spec.batch, spec.kv_heads, spec.slots(i), spec.head_dim) for i in range(len(spec.sliding))]
        self.keys = [torch.zeros(shape, dtype=spec.dtype, device=spec.device) for shape in shapes]
        self.values = [torch.zeros_like(k) for k in self.keys]

    def write_prompt(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """key/value [b, G, P, d] for columns 0..P-1 (prefill). A sliding layer keeps the newest `ring` of them."""
        width = key.size(2)
        if not self.spec.sliding[layer]:
            self.keys[layer][:, :, :width].copy_(key)
            self.values[layer][:, :, :width].copy_(value)
            return
        ring = self.spec.ring
        first = max(0, width - ring)
        slots = torch.arange(first, width, device=key.device) % ring
        self.keys[layer].index_copy_(2, slots, key[:, :, first:])
        self.values[layer].index_copy_(2, slots, value[:, :, first:])

    def write_step(self, layer: int, key: torch.Tensor, value: torch.Tensor, slot: torch.Tensor) -> None:
        """key/value [b, G, 1, d] into `slot` (a 1-element device tensor: capturable, no host sync)."""
        self.keys[layer].index_copy_(2, slot, key)
        self.values[layer].index_copy_(2, slot, value)


def prompt_masks(starts: torch.Tensor, width: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(global, sliding) boolean masks [b, 1, P, P] for the prefill; True = may attend.

    A query sees causal keys from its own row's real tokens; sliding layers also only the last W of them.
    Padding queries see only themselves: their outputs are discarded, but a fully masked row would be NaN and
    0 * NaN poisons the real rows' attention-times-V.
    """
    device = starts.device
    query = torch.arange(width, device=device).view(1, width, 1)
    key = torch.arange(width, device=device).view(1, 1, width)
    start = starts.view(-1, 1, 1)
    allowed = (key <= query) & (key >= start)
    padding_self = (query < start) & (key == query)
    global_mask = allowed | padding_self
    sliding_mask = (allowed & (key > query - window)) | padding_self
    return global_mask.unsqueeze(1), sliding_mask.unsqueeze(1)


def step_masks(t: torch.Tensor, starts: torch.Tensor, spec: CacheSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(global [b,1,1,S], sliding [b,1,1,ring]) masks for the query in column t (a 0-dim device tensor)."""
    device = starts.device
    start = starts.view(-1, 1)
    columns = torch.arange(spec.columns, device=device).view(1, -1)
    global_mask = (columns <= t) & (columns >= start)
    ring = spec.ring
    slot_columns = t - torch.remainder(t - torch.arange(ring, device=device), ring)
    sliding_mask = (slot_columns.view(1, -1) >= start) & (slot_columns.view(1, -1) >= 0)
    return global_mask.view(-1, 1, 1, spec.columns), sliding_mask.view(-1, 1, 1, ring)


def step_slots(t: torch.Tensor, spec: CacheSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(global slot, sliding slot) of column t, as 1-element device tensors."""
    return t.view(1), torch.remainder(t, spec.ring).view(1)

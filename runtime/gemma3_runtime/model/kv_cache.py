"""A minimal key/value cache for incremental decoding with `Gemma3Model`.

Keys are cached AFTER RoPE (so the cache never needs positions again), sequence-first as megatron lays them out:
[s, b, groups_per_rank, head_dim]. With `max_length` the buffers are preallocated and filled in place (no O(n^2)
copying); without it, steps are concatenated.
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer (keyed by megatron's global 1-based layer_number) cache; the model appends one chunk per forward."""

    def __init__(self, max_length: int | None = None) -> None:
        self.max_length = max_length
        self._key: dict[int, torch.Tensor] = {}
        self._value: dict[int, torch.Tensor] = {}
        self._filled: dict[int, int] = {}

    @property
    def length(self) -> int:
        """Number of cached positions (0 before the first forward)."""
        return max(self._filled.values(), default=0)

    def update(self, layer_number: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's key/value for one layer; return all keys/values so far."""
        filled = self._filled.get(layer_number, 0)
        new = key.shape[0]
        if self.max_length is None:
            if filled:
                key = torch.cat([self._key[layer_number], key], dim=0)
                value = torch.cat([self._value[layer_number], value], dim=0)
            self._key[layer_number], self._value[layer_number] = key, value
        else:
            if filled + new > self.max_length:
                raise ValueError(f"KVCache: {filled + new} positions exceed max_length={self.max_length}")
            if layer_number not in self._key:
                shape = (self.max_length, *key.shape[1:])
                self._key[layer_number] = key.new_empty(shape)
                self._value[layer_number] = value.new_empty(shape)
            self._key[layer_number][filled : filled + new] = key
            self._value[layer_number][filled : filled + new] = value
            key = self._key[layer_number][: filled + new]
            value = self._value[layer_number][: filled + new]
        self._filled[layer_number] = filled + new
        return key, value

    def select_batch(self, index: torch.Tensor) -> None:
        """Keep only the batch rows in `index` (e.g. drop finished sequences)."""
        for store in (self._key, self._value):
            for layer in store:
                store[layer] = store[layer].index_select(1, index.to(store[layer].device))

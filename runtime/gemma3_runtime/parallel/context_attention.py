"""Exact context-parallel attention for Gemma 3's two layer kinds (batch-first: q [b, s_local, hq, d]).

Each CP rank holds two query chunks (zigzag split, context_split.py). For a query chunk c of length L:
- global (causal) layers need the keys at positions [0, (c+1)L): the keys/values are all-gathered over the CP group
  (Gemma's few KV heads make them small) and each chunk takes its causal prefix;
- sliding layers (q - W < k <= q) need only [cL - (W-1), (c+1)L): a halo exchange fetches exactly those positions
  from the ranks that own them (fetch_positions), however many chunks W-1 spans.
Each chunk's queries are the last L positions of its key range, so on CUDA (bf16/fp16) the chunk runs on
FlashAttention-2 with bottom-right causal alignment and its own window, per document piece with packed documents (the
varlen form; chunk_kernels.py). Elsewhere the
per-chunk math is attention.py's eager kernel (fp32 softmax, GQA by repeated kv heads) with its mask evaluated on
GLOBAL positions, plus the packed-document rule (no attention across segment ids; a query always sees itself). Either
way every output row is the same function of the same keys as in full attention: exact up to float summation order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .chunk_kernels import pick_chunk_kernel
from .context_comm import HaloRoute, fetch_positions, gather_sequence
from .context_split import (
    chunk_ids,
    chunk_length,
    gathered_positions,
    merge_ranks,
    positions_for_rank,
    split_for_rank,
)


@dataclass
class ContextParallelState:
    """Per-forward CP facts shared by all layers: the group, the full sequence length, this rank's segment ids."""

    seq_len: int
    group: object = None
    segment_ids: torch.Tensor | None = None  # [b, s_local] int, this rank's split of the packed-document ids
    _full_segments: torch.Tensor | None = field(default=None, repr=False)
    _halo_routes: dict = field(default_factory=dict, repr=False)

    @property
    def cp_size(self) -> int:
        return dist.get_world_size(self.group)

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    def full_segment_ids(self) -> torch.Tensor | None:
        """[b, S] segment ids of the whole sequence in natural order (gathered once per forward; no gradient)."""
        if self.segment_ids is None:
            return None
        if self._full_segments is None:
            local = self.segment_ids.contiguous()
            parts = [torch.empty_like(local) for _ in range(self.cp_size)]
            dist.all_gather(parts, local, group=self.group)
            self._full_segments = merge_ranks(parts, seq_dim=1)
        return self._full_segments

    def halo_route(self, window: int, device) -> HaloRoute:
        """The halo exchange of a window size (built once per forward, shared by every sliding layer)."""
        key = (window, str(device))
        if key not in self._halo_routes:
            requests = halo_requests(self.seq_len, self.cp_size, window, device)
            self._halo_routes[key] = HaloRoute(requests, self.seq_len, self.cp_size, self.rank)
        return self._halo_routes[key]


def key_range(chunk: int, length: int, window: int | None) -> tuple[int, int]:
    """[start, stop) of the global key positions query chunk `chunk` can see (global: causal prefix)."""
    start = 0 if window is None else max(0, chunk * length - (window - 1))
    return start, (chunk + 1) * length


def halo_requests(seq_len: int, cp_size: int, window: int, device=None) -> list[torch.Tensor]:
    """Per rank: the sorted global positions its sliding-window chunks need (its own included), on `device` (the
    activations' device, so the routing indices built from them need no copies)."""
    length = chunk_length(seq_len, cp_size)
    requests = []
    for rank in range(cp_size):
        ranges = [torch.arange(*key_range(c, length, window), device=device) for c in chunk_ids(cp_size, rank)]
        requests.append(torch.cat(ranges).unique(sorted=True))
    return requests


def masked_attention(q, k, v, allowed: torch.Tensor, scale: float) -> torch.Tensor:
    """attention.py's eager kernel, batch-first: q [b, sq, hq, d], k/v [b, sk, hkv, d], allowed [b|1, sq, sk]."""
    groups = q.shape[2] // k.shape[2]
    q_, k_, v_ = (t.transpose(1, 2) for t in (q, k, v))
    if groups > 1:
        k_, v_ = k_.repeat_interleave(groups, dim=1), v_.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q_, k_.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v_).transpose(1, 2)


def allowed_by_position(q_pos, k_pos, window: int | None, q_seg=None, k_seg=None) -> torch.Tensor:
    """[b|1, sq, sk] Gemma's mask on global positions (attention.allowed_mask's rule, indices made global)."""
    q_pos, k_pos = q_pos[:, None], k_pos[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed = allowed & (k_pos > q_pos - window)
    allowed = allowed[None]
    if q_seg is not None:
        same = q_seg[:, :, None] == k_seg[:, None, :]
        allowed = (allowed & same) | (k_pos == q_pos)[None]
    return allowed


def context_parallel_attention(
    q, k, v, *, window: int | None, scale: float, state: ContextParallelState, chunk_kernel="auto"
):
    """Exact attention of this rank's two query chunks; q [b, s_local, hq, d], k/v [b, s_local, hkv, d] -> like q.

    `window` None = global (causal) layer, else the sliding window W (keys q - W < k <= q); `chunk_kernel` as in
    `attend_rank_chunks`.
    """
    cp_size, rank, seq_len = state.cp_size, state.rank, state.seq_len
    length = chunk_length(seq_len, cp_size)
    if q.shape[1] != 2 * length:
        raise ValueError(f"local queries: expected {2 * length} tokens (2 chunks of {length}), got {q.shape[1]}")
    if window is None:
        order = gathered_positions(seq_len, cp_size, q.device)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(seq_len, device=q.device)
        # natural order: row p is position p
        keys_values = gather_sequence(torch.cat([k, v], dim=2), state.group).index_select(1, inverse)
        key_pos = torch.arange(seq_len, device=q.device)
    else:
        route = state.halo_route(window, q.device)
        keys_values = fetch_positions(torch.cat([k, v], dim=2), route, state.group)
        key_pos = route.wanted
    keys, values = keys_values.split([k.shape[2], v.shape[2]], dim=2)  # one message carries both
    segments = state.full_segment_ids()
    return attend_rank_chunks(q, keys, values, key_pos, rank, cp_size, window, scale, segments, chunk_kernel)


def attend_rank_chunks(
    q, keys, values, key_pos, rank: int, cp_size: int, window, scale: float, segments=None, chunk_kernel="auto"
):
    """Rank `rank`'s two query chunks q [b, 2L, hq, d] against keys/values at global positions `key_pos` (sorted,
    unique, a superset of what the chunks can see); `segments` [b, S] are the whole sequence's segment ids or None.

    `chunk_kernel`: "auto" = the fused kernel where it applies (chunk_kernels.pick_chunk_kernel), else the masked
    path; None = the masked path; or a kernel (q_chunk, k_range, v_range, window, scale, key_segments) for the
    bottom-right band (key_segments: the key range's segment ids, or None without packed documents).
    """
    length = q.shape[1] // 2
    seq_len = 2 * cp_size * length
    if chunk_kernel == "auto":
        chunk_kernel = pick_chunk_kernel(q, packed=segments is not None)
    q_pos_all = positions_for_rank(seq_len, cp_size, rank, q.device)
    outputs = []
    for slot, chunk in enumerate(chunk_ids(cp_size, rank)):
        start, stop = key_range(chunk, length, window)
        q_chunk = q[:, slot * length : (slot + 1) * length]
        if chunk_kernel is not None:
            # key_pos holds every position of [start, stop) once, in order: one contiguous slice, no copy
            first = int(torch.searchsorted(key_pos, torch.tensor(start, device=key_pos.device)))
            k_range, v_range = (t.narrow(1, first, stop - start) for t in (keys, values))
            k_seg = None if segments is None else segments[:, start:stop]
            outputs.append(chunk_kernel(q_chunk, k_range, v_range, window, scale, k_seg))
            continue
        rows = ((key_pos >= start) & (key_pos < stop)).nonzero().flatten()
        q_pos = q_pos_all[slot * length : (slot + 1) * length]
        k_pos = key_pos[rows]
        q_seg = k_seg = None
        if segments is not None:
            q_seg, k_seg = segments[:, q_pos], segments[:, k_pos]
        allowed = allowed_by_position(q_pos, k_pos, window, q_seg, k_seg)
        outputs.append(masked_attention(q_chunk, keys[:, rows], values[:, rows], allowed, scale))
    return torch.cat(outputs, dim=1)


def emulated_context_attention(
    q, k, v, *, cp_size: int, window: int | None, scale: float, segment_ids=None, chunk_kernel="auto"
):
    """All CP ranks' chunk computations in ONE process on full [b, S, ...] tensors (no communication): the per-chunk
    path of `context_parallel_attention` for tests of chunk kernels (e.g. on one GPU); returns [b, S, hq, d]."""
    seq_len = q.shape[1]
    key_pos = torch.arange(seq_len, device=q.device)
    parts = [
        attend_rank_chunks(
            split_for_rank(q, cp_size, rank), k, v, key_pos, rank, cp_size, window, scale, segment_ids, chunk_kernel
        )
        for rank in range(cp_size)
    ]
    return merge_ranks(parts, seq_dim=1)

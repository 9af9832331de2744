"""Runs on every rank under torchrun (gloo, CPU, fp32): CP attention against full attention on the whole sequence.

Every rank builds the same full q/k/v/upstream gradient from one seed, computes the CP=1 reference (torch SDPA with
attention.py's own `allowed_mask`), then its CP share; outputs and dQ/dK/dV are gathered back to natural order and
compared normwise per tensor. Rank 0 writes the relative errors as JSON.
A case's "kernel" is "masked" (the eager per-chunk path every CPU run takes), "reference" (chunk_kernels'
plain-torch bottom-right band plugged in where the fused GPU kernel goes: the key slicing of the gathered and halo
keys is then the GPU path's) or "reference_varlen" (packed documents: the varlen kernel's document pieces with the
plain-torch band per piece, in the fused varlen kernel's place).
"""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gemma3_runtime.model.attention import AttentionContext, allowed_mask
from gemma3_runtime.parallel.chunk_kernels import reference_chunk_attention, reference_varlen_chunk_attention
from gemma3_runtime.parallel.context_attention import ContextParallelState, context_parallel_attention
from gemma3_runtime.parallel.context_split import merge_ranks, split_for_rank

HEADS, KV_HEADS, HEAD_DIM, BATCH = 4, 2, 8, 2
SCALE = 6.0**-0.5  # query_pre_attn_scalar ** -0.5, deliberately not head_dim ** -0.5


def _packed_segments(seq_len: int, gen: torch.Generator) -> torch.Tensor:
    """[b, S] ids of 3-4 documents of random lengths per row (boundaries fall inside chunks and on chunk edges)."""
    rows = []
    for _ in range(BATCH):
        cuts = sorted(torch.randperm(seq_len - 1, generator=gen)[:3].add(1).tolist())
        row = torch.zeros(seq_len, dtype=torch.long)
        for cut in cuts:
            row[cut:] += 1
        rows.append(row)
    return torch.stack(rows)


def _reference(q, k, v, window, segments):
    ctx = AttentionContext(segment_ids=segments) if segments is not None else None
    mask = allowed_mask(q.shape[1], k.shape[1], window, ctx, q.device)
    q_, k_, v_ = (t.transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask, scale=SCALE, enable_gqa=True).transpose(1, 2)


def _gather_natural(local: torch.Tensor, group=None) -> torch.Tensor:
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local.contiguous(), group=group)
    return merge_ranks(parts, seq_dim=1)


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).norm() / ref.norm())


KERNELS = {"masked": None, "reference": reference_chunk_attention, "reference_varlen": reference_varlen_chunk_attention}


def _one_case(seq_len: int, window: int | None, packed: bool, seed: int, kernel: str = "masked") -> dict[str, float]:
    cp_size, rank = dist.get_world_size(), dist.get_rank()
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(BATCH, seq_len, HEADS, HEAD_DIM, generator=gen)
    k = torch.randn(BATCH, seq_len, KV_HEADS, HEAD_DIM, generator=gen)
    v = torch.randn(BATCH, seq_len, KV_HEADS, HEAD_DIM, generator=gen)
    upstream = torch.randn(BATCH, seq_len, HEADS, HEAD_DIM, generator=gen)
    segments = _packed_segments(seq_len, gen) if packed else None

    full = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_out = _reference(*full, window, segments)
    ref_out.backward(upstream)

    local = [split_for_rank(t, cp_size, rank).requires_grad_() for t in (q, k, v)]
    local_segments = split_for_rank(segments, cp_size, rank) if packed else None
    state = ContextParallelState(seq_len=seq_len, segment_ids=local_segments)
    chunk_kernel = KERNELS[kernel]
    out = context_parallel_attention(*local, window=window, scale=SCALE, state=state, chunk_kernel=chunk_kernel)
    out.backward(split_for_rank(upstream, cp_size, rank))

    gathered = _gather_natural(out.detach())
    errors = {"out": _rel(gathered, ref_out.detach())}
    if window is not None:  # the comparison can fail: a window one key wider is far outside the tolerance
        errors["off_by_one_window"] = _rel(gathered, _reference(q, k, v, window + 1, segments))
    for name, ours, ref in zip(("dq", "dk", "dv"), local, full, strict=True):
        errors[name] = _rel(_gather_natural(ours.grad), ref.grad)
    errors.update(_two_layers(q, k, v, upstream, window, segments, state, chunk_kernel))
    return errors


def _two_layers(q, k, v, upstream, window, segments, state, chunk_kernel) -> dict[str, float]:
    """Two chained layers on one state (its cached halo route and segment ids reused); k/v feed both layers, so
    their gradients add the contributions of two communication backwards."""
    cp_size, rank = dist.get_world_size(), dist.get_rank()
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = _reference(_reference(*full, window, segments), full[1], full[2], window, segments)
    ref.backward(upstream)
    local = [split_for_rank(t, cp_size, rank).requires_grad_() for t in (q, k, v)]
    first = context_parallel_attention(*local, window=window, scale=SCALE, state=state, chunk_kernel=chunk_kernel)
    out = context_parallel_attention(
        first, local[1], local[2], window=window, scale=SCALE, state=state, chunk_kernel=chunk_kernel
    )
    out.backward(split_for_rank(upstream, cp_size, rank))
    errors = {"two_layers_out": _rel(_gather_natural(out.detach()), ref.detach())}
    for name, ours, theirs in zip(("dq", "dk", "dv"), local, full, strict=True):
        errors[f"two_layers_{name}"] = _rel(_gather_natural(ours.grad), theirs.grad)
    return errors


def run_cases(cases: list[dict], out_path: str) -> None:
    """Each case: {"seq_len", "window" (null = global layer), "packed", "seed", optional "kernel"}."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        results = [{**case, "errors": _one_case(**case)} for case in cases]
        if dist.get_rank() == 0:
            with open(os.path.join(out_path), "w") as fh:
                json.dump({"cp_size": dist.get_world_size(), "results": results}, fh)
    finally:
        dist.destroy_process_group()

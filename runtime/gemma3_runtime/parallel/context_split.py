"""The zigzag ("load-balanced") split of a sequence over a context-parallel (CP) group.

A sequence of S tokens is cut into 2*CP equal chunks; CP rank r holds chunks r and 2*CP-1-r. Under causal attention
chunk c costs about c+1 chunk-pairs of work, so every rank gets (r+1) + (2*CP-r) = 2*CP+1: the same work everywhere.
Every per-token tensor (inputs, positions, labels, loss masks, segment ids) goes through the same `split_for_rank`,
so they stay aligned; `positions_for_rank` is the single source of the global positions a rank holds.
"""

from __future__ import annotations

import torch

from gemma3_runtime.parallel.context_rules import split_problem


def validate_split(seq_len: int, cp_size: int) -> None:
    """Raise ValueError unless a sequence of `seq_len` tokens splits into 2*cp_size equal chunks (context_rules)."""
    problem = split_problem(seq_len, cp_size)
    if problem is not None:
        raise ValueError(problem)


def chunk_ids(cp_size: int, rank: int) -> tuple[int, int]:
    """The two chunk indices (of 2*cp_size) that CP rank `rank` holds, in the order they sit locally."""
    if not 0 <= rank < cp_size:
        raise ValueError(f"context-parallel rank: expected 0 <= rank < {cp_size}, got {rank}")
    return rank, 2 * cp_size - 1 - rank


def chunk_length(seq_len: int, cp_size: int) -> int:
    validate_split(seq_len, cp_size)
    return seq_len // (2 * cp_size)


def positions_for_rank(seq_len: int, cp_size: int, rank: int, device=None) -> torch.Tensor:
    """Global token positions [2 * chunk] held by `rank`, in local order (its first chunk, then its second)."""
    length = chunk_length(seq_len, cp_size)
    parts = [torch.arange(c * length, (c + 1) * length, device=device) for c in chunk_ids(cp_size, rank)]
    return torch.cat(parts)


def gathered_positions(seq_len: int, cp_size: int, device=None) -> torch.Tensor:
    """Global positions of the concatenation of all ranks' local tensors in rank order (what all-gather yields)."""
    return torch.cat([positions_for_rank(seq_len, cp_size, r, device) for r in range(cp_size)])


def split_for_rank(tensor: torch.Tensor, cp_size: int, rank: int, seq_dim: int = 1) -> torch.Tensor:
    """The part of a full-sequence tensor that `rank` holds ([b, s, ...]: seq_dim=1; [s, b, ...]: seq_dim=0)."""
    index = positions_for_rank(tensor.shape[seq_dim], cp_size, rank, tensor.device)
    return tensor.index_select(seq_dim, index)


def merge_ranks(parts: list[torch.Tensor], seq_dim: int = 1) -> torch.Tensor:
    """Inverse of `split_for_rank` over all ranks: the full sequence from every rank's local tensor (rank order)."""
    cp_size = len(parts)
    concatenated = torch.cat(parts, dim=seq_dim)
    order = gathered_positions(concatenated.shape[seq_dim], cp_size, concatenated.device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return concatenated.index_select(seq_dim, inverse)


def split_batch(batch: dict[str, torch.Tensor], cp_size: int, rank: int) -> dict[str, torch.Tensor]:
    """This rank's share of a training batch of per-token [b, s] tensors (input ids, labels, loss mask, position ids,
    segment ids): every entry goes through `split_for_rank`, so they stay aligned."""
    lengths = {name: tuple(t.shape) for name, t in batch.items()}
    if len({shape[:2] for shape in lengths.values()}) != 1 or any(len(shape) != 2 for shape in lengths.values()):
        raise ValueError(f"context-parallel batch: expected [batch, seq] tensors of one shape, got {lengths}")
    return {name: split_for_rank(t, cp_size, rank) for name, t in batch.items()}

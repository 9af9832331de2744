"""Tensor transforms between HF layouts and Megatron layouts (pure functions, no distributed state).

Every transform works on the FULL (TP-unsharded) tensor; `tp_shard`/`tp_unshard` then cut or join the rank-local
pieces. The one exception is gate/up: Megatron's fused fc1 is `cat(gate_i, up_i)` per TP shard, so its "full"
tensor depends on the TP size and the fuse/split take `tp_size`.

QKV: megatron-core 0.16.1 (`SelfAttention.get_query_key_value_tensors`) expects, per query group g, the rows
`[q heads of g, k_g, v_g]`, and the column-parallel linear chunks that fused tensor contiguously on dim 0. With
fewer kv heads than TP ranks a rank holds part of a group; megatron all-gathers the fused output and slices its
group back out, so the weight layout is still the plain contiguous chunk of the same fused tensor.
"""

from __future__ import annotations

import torch

#: Megatron vocabulary rows are padded to a multiple of this (independent of TP, so checkpoints reshard).
VOCAB_PAD_MULTIPLE = 128


def padded_vocab_size(vocab_size: int, multiple: int = VOCAB_PAD_MULTIPLE) -> int:
    return -(-vocab_size // multiple) * multiple


def pad_vocab(weight: torch.Tensor, padded_rows: int) -> torch.Tensor:
    """HF [V, D] -> Megatron [V_pad, D], new rows zero."""
    if weight.shape[0] > padded_rows:
        raise ValueError(f"vocab rows {weight.shape[0]} exceed the padded size {padded_rows}")
    if weight.shape[0] == padded_rows:
        return weight
    pad = weight.new_zeros((padded_rows - weight.shape[0],) + tuple(weight.shape[1:]))
    return torch.cat([weight, pad], dim=0)


def trim_vocab(weight: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Megatron [V_pad, D] -> HF [V, D]."""
    return weight[:vocab_size]


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_groups: int) -> torch.Tensor:
    """HF q [H*d, D], k/v [G*d, D] -> Megatron [(H+2G)*d, D] ordered per group as [q x n, k, v]."""
    if num_heads % num_groups:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_query_groups {num_groups}")
    head_dim = q.shape[0] // num_heads
    hidden = q.shape[1:]
    n = num_heads // num_groups
    qg = q.reshape(num_groups, n * head_dim, *hidden)
    kg = k.reshape(num_groups, head_dim, *hidden)
    vg = v.reshape(num_groups, head_dim, *hidden)
    return torch.cat([qg, kg, vg], dim=1).reshape((num_heads + 2 * num_groups) * head_dim, *hidden)


def split_qkv(fused: torch.Tensor, num_heads: int, num_groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `fuse_qkv`."""
    n = num_heads // num_groups
    head_dim = fused.shape[0] // (num_heads + 2 * num_groups)
    hidden = fused.shape[1:]
    grouped = fused.reshape(num_groups, (n + 2) * head_dim, *hidden)
    q, k, v = torch.split(grouped, [n * head_dim, head_dim, head_dim], dim=1)
    return (
        q.reshape(num_heads * head_dim, *hidden).contiguous(),
        k.reshape(num_groups * head_dim, *hidden).contiguous(),
        v.reshape(num_groups * head_dim, *hidden).contiguous(),
    )


def fuse_gate_up(gate: torch.Tensor, up: torch.Tensor, tp_size: int) -> torch.Tensor:
    """HF gate/up [F, D] -> Megatron fc1 [2F, D] = cat over ranks of cat(gate_i, up_i)."""
    pieces = []
    for g, u in zip(torch.chunk(gate, tp_size, dim=0), torch.chunk(up, tp_size, dim=0), strict=False):
        pieces += [g, u]
    return torch.cat(pieces, dim=0)


def split_gate_up(fused: torch.Tensor, tp_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `fuse_gate_up` for the same `tp_size`."""
    gates, ups = [], []
    for shard in torch.chunk(fused, tp_size, dim=0):
        g, u = torch.chunk(shard, 2, dim=0)
        gates.append(g)
        ups.append(u)
    return torch.cat(gates, dim=0), torch.cat(ups, dim=0)


def tp_shard(full: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    """The contiguous piece of `full` that TP rank `rank` owns along `dim`."""
    if full.shape[dim] % size:
        raise ValueError(f"dimension {dim} of size {full.shape[dim]} does not split over {size} TP ranks")
    return torch.chunk(full, size, dim=dim)[rank]


def tp_unshard(pieces: list[torch.Tensor], dim: int) -> torch.Tensor:
    return torch.cat(pieces, dim=dim)

"""QKV / gate-up / vocab transforms: round trips at TP 1/2/4 and the exact layouts megatron-core expects."""

import pytest
import torch

from gemma3_runtime.bridge import transforms as T

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("heads,groups", [(4, 1), (8, 4), (8, 2), (4, 4)])
def test_qkv_fuse_split_round_trip(heads, groups):
    d, hidden = 3, 5
    q = torch.randn(heads * d, hidden)
    k = torch.randn(groups * d, hidden)
    v = torch.randn(groups * d, hidden)
    fused = T.fuse_qkv(q, k, v, heads, groups)
    assert fused.shape == ((heads + 2 * groups) * d, hidden)
    q2, k2, v2 = T.split_qkv(fused, heads, groups)
    assert torch.equal(q, q2) and torch.equal(k, k2) and torch.equal(v, v2)


def test_qkv_layout_is_q_heads_then_k_then_v_per_group():
    heads, groups, d = 8, 4, 2
    # each head's rows carry its label so the layout is readable: q=100+h, k=200+g, v=300+g
    q = torch.cat([torch.full((d, 1), 100.0 + h) for h in range(heads)])
    k = torch.cat([torch.full((d, 1), 200.0 + g) for g in range(groups)])
    v = torch.cat([torch.full((d, 1), 300.0 + g) for g in range(groups)])
    labels = T.fuse_qkv(q, k, v, heads, groups)[::d, 0].tolist()
    assert labels == [100, 101, 200, 300, 102, 103, 201, 301, 104, 105, 202, 302, 106, 107, 203, 303]


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_gate_up_per_tp_shard_layout_and_round_trip(tp):
    f, hidden = 8, 3
    gate = torch.randn(f, hidden)
    up = torch.randn(f, hidden)
    fused = T.fuse_gate_up(gate, up, tp)
    for rank in range(tp):
        shard = T.tp_shard(fused, 0, rank, tp)
        g_i, u_i = torch.chunk(shard, 2)
        assert torch.equal(g_i, torch.chunk(gate, tp)[rank]) and torch.equal(u_i, torch.chunk(up, tp)[rank])
    g2, u2 = T.split_gate_up(fused, tp)
    assert torch.equal(g2, gate) and torch.equal(u2, up)


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("dim", [0, 1])
def test_tp_shard_unshard_round_trip(tp, dim):
    full = torch.randn(8, 12)
    pieces = [T.tp_shard(full, dim, r, tp) for r in range(tp)]
    assert torch.equal(T.tp_unshard(pieces, dim), full)


def test_tp_shard_refuses_uneven_split():
    with pytest.raises(ValueError, match="does not split"):
        T.tp_shard(torch.zeros(6, 2), 0, 0, 4)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_qkv_sharded_over_more_ranks_than_kv_heads_reassembles(tp):
    """270M/1B: one kv head; megatron all-gathers the contiguous TP chunks of the same fused tensor."""
    heads, groups, d, hidden = 4, 1, 4, 6
    q, k, v = torch.randn(heads * d, hidden), torch.randn(d, hidden), torch.randn(d, hidden)
    fused = T.fuse_qkv(q, k, v, heads, groups)
    pieces = [T.tp_shard(fused, 0, r, tp) for r in range(tp)]
    q2, k2, v2 = T.split_qkv(T.tp_unshard(pieces, 0), heads, groups)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)


def test_vocab_pad_and_trim():
    assert T.padded_vocab_size(262144) == 262144
    assert T.padded_vocab_size(262208) == 262272
    assert T.padded_vocab_size(1000) == 1024
    w = torch.randn(1000, 4)
    padded = T.pad_vocab(w, 1024)
    assert padded.shape == (1024, 4) and torch.count_nonzero(padded[1000:]) == 0
    assert torch.equal(T.trim_vocab(padded, 1000), w)
    with pytest.raises(ValueError):
        T.pad_vocab(w, 999)

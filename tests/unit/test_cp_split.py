"""The zigzag split: round trips, position bookkeeping, load balance, ownership and the sliding-window halo."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gemma3_runtime.model.attention import AttentionContext, allowed_mask
from gemma3_runtime.parallel.context_attention import allowed_by_position, halo_requests, key_range
from gemma3_runtime.parallel.context_comm import HaloRoute, owner_of
from gemma3_runtime.parallel.context_split import (
    chunk_ids,
    gathered_positions,
    merge_ranks,
    positions_for_rank,
    split_for_rank,
    validate_split,
)

pytestmark = pytest.mark.unit

cp_sizes = st.integers(min_value=1, max_value=6)
chunk_lengths = st.integers(min_value=1, max_value=5)


@settings(max_examples=100, deadline=None)
@given(cp=cp_sizes, length=chunk_lengths, seq_dim=st.sampled_from([0, 1]), batch=st.integers(1, 3))
def test_split_then_merge_is_identity(cp, length, seq_dim, batch):
    seq_len = 2 * cp * length
    shape = (batch, seq_len, 3) if seq_dim == 1 else (seq_len, batch, 3)
    full = torch.randn(shape)
    parts = [split_for_rank(full, cp, rank, seq_dim) for rank in range(cp)]
    assert all(p.shape[seq_dim] == 2 * length for p in parts)
    assert torch.equal(merge_ranks(parts, seq_dim), full)


@settings(max_examples=100, deadline=None)
@given(cp=cp_sizes, length=chunk_lengths)
def test_positions_labels_and_segments_split_alike(cp, length):
    """Every per-token tensor goes through the same split: a rank's labels/segment ids sit at its positions."""
    seq_len = 2 * cp * length
    labels = torch.arange(seq_len)[None] * 7 + 1
    segments = torch.arange(seq_len)[None] // 3
    for rank in range(cp):
        pos = positions_for_rank(seq_len, cp, rank)
        assert torch.equal(split_for_rank(labels, cp, rank), labels[:, pos])
        assert torch.equal(split_for_rank(segments, cp, rank), segments[:, pos])
        first, second = chunk_ids(cp, rank)
        assert pos[0] == first * length and pos[-1] == (second + 1) * length - 1
    assert torch.equal(gathered_positions(seq_len, cp).sort().values, torch.arange(seq_len))


@settings(max_examples=50, deadline=None)
@given(cp=cp_sizes, length=chunk_lengths)
def test_causal_work_is_balanced(cp, length):
    """Causal work of a query at position p is p+1 keys: the zigzag gives every rank the same total."""
    seq_len = 2 * cp * length
    work = {int((positions_for_rank(seq_len, cp, r) + 1).sum()) for r in range(cp)}
    assert len(work) == 1


@settings(max_examples=100, deadline=None)
@given(cp=cp_sizes, length=chunk_lengths)
def test_owner_of_inverts_the_split(cp, length):
    seq_len = 2 * cp * length
    for rank in range(cp):
        pos = positions_for_rank(seq_len, cp, rank)
        owner, local = owner_of(pos, seq_len, cp)
        assert torch.equal(owner, torch.full_like(pos, rank))
        assert torch.equal(local, torch.arange(pos.numel()))


@settings(max_examples=100, deadline=None)
@given(cp=cp_sizes, length=chunk_lengths, window=st.integers(1, 40))
def test_halo_requests_exactly_the_window(cp, length, window):
    """A rank fetches the keys its two chunks can see under the window, and nothing else."""
    seq_len = 2 * cp * length
    requests = halo_requests(seq_len, cp, window)
    for rank, wanted in enumerate(requests):
        visible = set()
        for pos in positions_for_rank(seq_len, cp, rank).tolist():
            visible |= set(range(max(0, pos - window + 1), pos + 1))
        assert set(wanted.tolist()) == visible
        for chunk in chunk_ids(cp, rank):
            start, stop = key_range(chunk, length, window)
            assert stop - start <= length + window - 1


@settings(max_examples=60, deadline=None)
@given(
    seq_len=st.integers(1, 24),
    window=st.one_of(st.none(), st.integers(1, 30)),
    data=st.data(),
)
def test_position_mask_matches_the_core_attention_mask(seq_len, window, data):
    """On natural positions the CP mask is attention.py's allowed_mask, packed documents included."""
    seg = torch.tensor([data.draw(st.lists(st.integers(0, 3), min_size=seq_len, max_size=seq_len))]).cummax(1).values
    pos = torch.arange(seq_len)
    ours = allowed_by_position(pos, pos, window, seg, seg)
    theirs = allowed_mask(seq_len, seq_len, window, AttentionContext(segment_ids=seg), "cpu")[:, 0]
    assert torch.equal(ours, theirs)
    plain = allowed_mask(seq_len, seq_len, window, None, "cpu")[:, 0]
    assert torch.equal(allowed_by_position(pos, pos, window), plain)


@pytest.mark.parametrize(
    "seq_len, cp, message",
    [(30, 4, "multiple of 2 * context_parallel_size = 8"), (0, 1, "positive multiple"), (8, 0, ">= 1")],
)
def test_validate_split_names_the_field(seq_len, cp, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_split(seq_len, cp)


def test_chunk_ids_reject_a_rank_outside_the_group():
    with pytest.raises(ValueError, match="0 <= rank < 2"):
        chunk_ids(2, 2)


@settings(max_examples=100, deadline=None)
@given(cp=cp_sizes, length=chunk_lengths, window=st.integers(1, 40))
def test_halo_routes_agree_between_sender_and_receiver(cp, length, window):
    """What each owner sends a peer is exactly what that peer expects from it, row for row, and nothing is fetched
    twice or from the wrong owner (the routing is computed on every rank, never exchanged)."""
    seq_len = 2 * cp * length
    requests = halo_requests(seq_len, cp, window)
    routes = [HaloRoute(requests, seq_len, cp, rank) for rank in range(cp)]
    for rank, route in enumerate(routes):
        mine = positions_for_rank(seq_len, cp, rank)
        filled = torch.cat([route.own_out, *route.recv.values()]).sort().values
        assert torch.equal(filled, torch.arange(requests[rank].numel()))
        assert torch.equal(mine[route.own_local], requests[rank][route.own_out])
        for peer, rows in route.recv.items():
            sent = routes[peer].send[rank]
            assert torch.equal(positions_for_rank(seq_len, cp, peer)[sent], requests[rank][rows])
        assert set(route.send) == {p for p, r in enumerate(routes) if rank in r.recv}

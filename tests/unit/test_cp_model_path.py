"""The model's context-parallel path in one process (a CP group of one rank): the plumbing from Gemma3Model to
Gemma3CoreAttention (state built per forward, both activation layouts, segment ids, default positions, activation
recompute) gives the plain path's per-token loss and gradients; and the data split keeps a batch aligned. The
multi-rank parity is tests/multiproc/test_context_parallel_model.py."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from model_helpers import build_model, tiny_config

from gemma3_runtime.parallel.context_split import positions_for_rank, split_batch

pytestmark = pytest.mark.unit


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).norm() / ref.norm())


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_one_rank_context_parallel_path_equals_the_plain_path(batch_first, packed):
    from gemma3_runtime.perf.apply import fill_model_hooks
    from gemma3_runtime.perf.config import PerfConfig

    fields = {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    if batch_first:
        fields["transformer_overrides"] = {"gemma3_batch_first": True}
    torch.manual_seed(0)
    plain = build_model(tiny_config(window=5), **fields).train()
    assert plain.context_parallel_group is None  # CP=1: the forward never builds a CP state
    split = build_model(tiny_config(window=5), **fields).train()
    split.load_state_dict(plain.state_dict())
    split.context_parallel_group = dist.group.WORLD  # a CP group of one rank: the CP code path, nothing to split
    if batch_first:
        fill_model_hooks([plain, split], PerfConfig())
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 500, (2, 24), generator=gen)
    segments = torch.tensor([[1] * 10 + [2] * 14, [1] * 3 + [2] * 15 + [3] * 6]) if packed else None
    losses = []
    for model in (plain, split):
        loss = model(input_ids=ids, labels=torch.roll(ids, -1, 1), segment_ids=segments)
        loss.mean().backward()
        losses.append(loss.detach())
    assert _rel(losses[1], losses[0]) <= 1e-5
    for (name, p), q in zip(plain.named_parameters(), split.parameters(), strict=True):
        if p.grad.norm() > 0:
            assert _rel(q.grad, p.grad) <= 1e-5, name


def test_split_batch_keeps_every_tensor_aligned_and_refuses_other_shapes():
    seq = 16
    positions = torch.arange(seq).expand(2, seq)
    batch = {"input_ids": positions * 10, "labels": positions + 1, "position_ids": positions.clone()}
    for rank in range(4):
        share = split_batch(batch, 4, rank)
        assert torch.equal(share["position_ids"][0], positions_for_rank(seq, 4, rank))
        assert torch.equal(share["input_ids"], share["position_ids"] * 10)
        assert torch.equal(share["labels"], share["position_ids"] + 1)
    with pytest.raises(ValueError, match=r"context-parallel batch: expected \[batch, seq\] tensors of one shape"):
        split_batch({"input_ids": positions, "labels": positions[:, :8]}, 2, 0)
    with pytest.raises(ValueError, match="seq_length: expected a positive multiple of 2 \\* context_parallel_size"):
        split_batch({"input_ids": positions[:, :6]}, 2, 0)

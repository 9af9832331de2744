"""Next-token selection: greedy, temperature, top-k, top-p, seeds; plus left padding and the cache masks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.generate.kv_cache import CacheSpec, prompt_masks, step_masks
from gemma3_runtime.generate.prompts import left_pad
from gemma3_runtime.generate.sampling import SamplingParams, chunked_argmax, select_next_tokens, truncate_logits

pytestmark = pytest.mark.unit


def test_greedy_is_argmax_per_row():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 4.9, 0.0]])
    assert select_next_tokens(logits, SamplingParams()).tolist() == [1, 0]


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 4),
    slices=st.integers(1, 6),
    chunk=st.sampled_from([1, 2, 4, 8]),
    levels=st.integers(1, 4),
    nan_at=st.none() | st.integers(0, 10**6),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_chunked_argmax_is_argmax_ties_and_nan_included(rows, slices, chunk, levels, nan_at, seed, dtype):
    """Few distinct values (many ties, often across slices) and sometimes a NaN: the FIRST maximal index, as argmax."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randint(0, levels, (rows, slices * chunk), generator=gen).to(dtype)
    if nan_at is not None:
        logits.view(-1)[nan_at % logits.numel()] = float("nan")
    assert chunked_argmax(logits, chunk).tolist() == torch.argmax(logits, dim=-1).tolist()


def test_chunked_argmax_on_a_vocabulary_sized_row():
    logits = torch.randn(3, 262144, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    logits[1, 5000] = logits[1, 200000] = 100.0  # tie across slices: the first wins
    assert chunked_argmax(logits).tolist() == torch.argmax(logits, dim=-1).tolist()
    assert chunked_argmax(logits)[1] == 5000


def test_sampling_frequencies_follow_softmax_of_logits_over_temperature():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).expand(20000, 3).contiguous()
    params = SamplingParams(temperature=1.0, seed=7)
    counts = (
        torch.bincount(
            select_next_tokens(logits, params, params.make_generator(torch.device("cpu"))), minlength=3
        ).float()
        / 20000
    )
    torch.testing.assert_close(counts, torch.tensor([0.5, 0.3, 0.2]), atol=0.015, rtol=0)
    # temperature 0.5 squares the odds: p ~ [25, 9, 4] / 38
    params = SamplingParams(temperature=0.5, seed=7)
    counts = (
        torch.bincount(
            select_next_tokens(logits, params, params.make_generator(torch.device("cpu"))), minlength=3
        ).float()
        / 20000
    )
    torch.testing.assert_close(counts, torch.tensor([25, 9, 4]) / 38.0, atol=0.015, rtol=0)


def test_same_seed_same_tokens_other_seed_other_tokens():
    logits = torch.randn(64, 1000, generator=torch.Generator().manual_seed(0))

    def draw(seed):
        params = SamplingParams(temperature=1.0, seed=seed)
        return select_next_tokens(logits, params, params.make_generator(torch.device("cpu"))).tolist()

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_top_k_keeps_exactly_the_k_best():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(truncate_logits(logits, top_k=2, top_p=1.0))
    assert kept.tolist() == [[False, True, False, True, False]]
    params = SamplingParams(temperature=2.0, top_k=2, seed=1)
    draws = select_next_tokens(logits.expand(2000, 5), params, params.make_generator(torch.device("cpu")))
    assert set(draws.tolist()) == {1, 3}


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.25, 0.2]])
    logits = probs.log()
    # 0.5 + 0.25 = 0.75 < 0.8 so the 0.2 token is needed too; 0.05 is not
    kept = torch.isfinite(truncate_logits(logits, top_k=0, top_p=0.8)).tolist()
    assert kept == [[False, True, True, True]]
    assert torch.isfinite(truncate_logits(logits, top_k=0, top_p=0.5)).tolist() == [[False, True, False, False]]
    # the most likely token always survives, however small p is
    assert torch.isfinite(truncate_logits(logits, top_k=0, top_p=0.01)).tolist() == [[False, True, False, False]]


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"temperature": -1.0}, "--temperature"),
        ({"top_k": -2}, "--top-k"),
        ({"top_p": 0.0}, "--top-p"),
        ({"top_p": 1.5}, "--top-p"),
    ],
)
def test_bad_sampling_values_name_the_flag(kwargs, flag):
    with pytest.raises(UserInputError, match=flag):
        SamplingParams(**kwargs)


def test_left_pad_right_aligns_and_records_starts():
    batch = left_pad([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert batch.starts.tolist() == [0, 2, 1] and batch.lengths == (3, 1, 2)


def test_prompt_masks_are_causal_windowed_and_never_see_padding():
    starts = torch.tensor([0, 3])
    glob, slide = prompt_masks(starts, width=6, window=2)
    q, k = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    for row, start in enumerate(starts.tolist()):
        real_q = q >= start
        expect_global = (k <= q) & (k >= start)
        expect_sliding = expect_global & (k > q - 2)
        assert torch.equal(glob[row, 0][real_q], expect_global[real_q])
        assert torch.equal(slide[row, 0][real_q], expect_sliding[real_q])
        assert glob[row, 0].any(-1).all() and slide[row, 0].any(-1).all()  # no empty row -> no NaN


@pytest.mark.parametrize("columns, window", [(16, 4), (6, 8)])
def test_ring_slots_hold_exactly_the_window_after_every_step(columns, window):
    """Simulate writes column by column: the slots the step mask admits are exactly the row's last `window` real
    columns (or all of them when the generation is shorter than the window)."""
    spec = CacheSpec(
        batch=2,
        columns=columns,
        window=window,
        sliding=(True, False),
        kv_heads=1,
        head_dim=1,
        dtype=torch.float32,
        device=torch.device("cpu"),
    )
    starts = torch.tensor([0, 2])
    ring = torch.full((spec.ring,), -1)
    for t in range(columns):
        ring[t % spec.ring] = t
        glob, slide = step_masks(torch.tensor(t), starts, spec)
        for row, start in enumerate(starts.tolist()):
            seen = set(ring[slide[row, 0, 0]].tolist())
            assert seen == {c for c in range(max(start, t - window + 1), t + 1)}, (t, row)
            assert set(torch.nonzero(glob[row, 0, 0]).flatten().tolist()) == set(range(start, t + 1))


@pytest.mark.parametrize("heads, groups", [(4, 1), (4, 2), (2, 2)])
def test_matmul_step_attention_equals_sdpa(heads, groups):
    """The compiled decode step's attention (matmul + masked fp32 softmax) computes what SDPA does, masked slots
    (padding, unwritten ring slots) included."""
    from gemma3_runtime.generate.attention import step_attention, step_attention_matmul

    torch.manual_seed(0)
    b, slots, d = 3, 7, 16
    q = torch.randn(b, heads, 1, d)
    k, v = torch.randn(b, groups, slots, d), torch.randn(b, groups, slots, d)
    mask = torch.rand(b, 1, 1, slots) > 0.4
    mask[..., 0] = True  # a query always sees at least itself
    for m in (mask, None):
        torch.testing.assert_close(step_attention_matmul(q, k, v, m, 0.3), step_attention(q, k, v, m, 0.3))

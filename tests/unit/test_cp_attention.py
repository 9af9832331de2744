"""The per-chunk CP attention, all ranks emulated in one process: equal to full attention (torch SDPA with
attention.py's allowed_mask) within 1e-5 relative (fp32) for random CP sizes, chunk lengths, windows and packed
documents, gradients included.
The multi-process tests (tests/multiproc/test_context_parallel.py) add the communication; packed documents on the
per-chunk kernel path (the varlen form) are tests/unit/test_cp_varlen.py's."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gemma3_runtime.model.attention import AttentionContext, allowed_mask
from gemma3_runtime.parallel.chunk_kernels import bottom_right_allowed, reference_chunk_attention
from gemma3_runtime.parallel.context_attention import emulated_context_attention

pytestmark = pytest.mark.unit

SCALE = 6.0**-0.5


def _full(q, k, v, window, segments):
    ctx = AttentionContext(segment_ids=segments) if segments is not None else None
    mask = allowed_mask(q.shape[1], k.shape[1], window, ctx, q.device)
    q_, k_, v_ = (t.transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask, scale=SCALE, enable_gqa=True).transpose(1, 2)


def _close(ours, ref) -> bool:
    """Normwise relative 1e-5, with an absolute floor for gradients that are zero in exact arithmetic (W=1: a query
    sees only itself, so dQ is 0 and the reference holds rounding noise)."""
    return float((ours - ref).norm()) <= 1e-5 * float(ref.norm()) + 1e-5


@settings(max_examples=25, deadline=None)
@given(
    cp=st.integers(1, 4),
    length=st.integers(1, 4),
    window=st.one_of(st.none(), st.integers(1, 20)),
    packed=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_emulated_chunks_equal_full_attention(cp, length, window, packed, seed):
    seq_len = 2 * cp * length
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, seq_len, 4, 8, generator=gen)
    k, v = (torch.randn(2, seq_len, 2, 8, generator=gen) for _ in range(2))
    upstream = torch.randn(2, seq_len, 4, 8, generator=gen)
    segments = torch.randint(0, 2, (2, seq_len), generator=gen).cumsum(1) if packed else None
    results = []
    for attend in (
        lambda a, b, c: emulated_context_attention(
            a, b, c, cp_size=cp, window=window, scale=SCALE, segment_ids=segments
        ),
        lambda a, b, c: _full(a, b, c, window, segments),
    ):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attend(*inputs)
        out.backward(upstream)
        results.append([out.detach(), *(t.grad for t in inputs)])
    for ours, ref in zip(*results, strict=True):
        assert _close(ours, ref)


@settings(max_examples=25, deadline=None)
@given(
    cp=st.integers(1, 4),
    length=st.integers(1, 5),
    window=st.one_of(st.none(), st.integers(1, 24)),
    seed=st.integers(0, 2**16),
)
def test_reference_chunk_kernel_in_the_fused_slot_equals_full_attention(cp, length, window, seed):
    """The GPU dispatch (a contiguous key slice per chunk, the bottom-right band kernel) with the plain-torch kernel
    in the fused kernel's place: equal to the masked per-chunk path and to full attention in fp32, gradients too."""
    seq_len = 2 * cp * length
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, seq_len, 4, 8, generator=gen)
    k, v = (torch.randn(2, seq_len, 1, 8, generator=gen) for _ in range(2))
    upstream = torch.randn(2, seq_len, 4, 8, generator=gen)
    results = []
    for attend in (
        lambda a, b, c: emulated_context_attention(
            a, b, c, cp_size=cp, window=window, scale=SCALE, chunk_kernel=reference_chunk_attention
        ),
        lambda a, b, c: emulated_context_attention(a, b, c, cp_size=cp, window=window, scale=SCALE, chunk_kernel=None),
        lambda a, b, c: _full(a, b, c, window, None),
    ):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attend(*inputs)
        out.backward(upstream)
        results.append([out.detach(), *(t.grad for t in inputs)])
    for ours, masked, ref in zip(*results, strict=True):
        assert _close(ours, ref)
        assert _close(ours, masked)


@given(q_len=st.integers(1, 12), extra=st.integers(0, 12))
def test_bottom_right_band_is_torchs_lower_right_causal(q_len, extra):
    """Without a window the band is torch's own lower-right causal bias (what flash's is_causal means for sq < sk)."""
    from torch.nn.attention.bias import causal_lower_right

    k_len = q_len + extra
    expected = causal_lower_right(q_len, k_len)._materialize(torch.device("cpu"))
    assert torch.equal(bottom_right_allowed(q_len, k_len, None), expected)

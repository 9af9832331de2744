"""Packed documents on the per-chunk kernel path of CP attention (chunk_kernels' varlen form), on CPU.

The fused varlen kernel (one FlashAttention-2 varlen call per chunk over its document pieces) shares everything but
the kernel call with `reference_varlen_chunk_attention` (the same pieces, one plain-torch bottom-right band per
piece), so plugging that one in where the fused one goes checks the piece arithmetic end to end: it equals the masked
per-chunk path (and full attention) in fp32, gradients included, for hypothesis-generated packings; the mask the
pieces imply equals the masked path's mask bit for bit. The fused call's own arguments and the backward that the
aten op's autograd derives from them are checked on meta tensors; the kernel itself runs in tests/gpu.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from gemma3_runtime.model.attention import AttentionContext, allowed_mask
from gemma3_runtime.parallel.chunk_kernels import (
    bottom_right_allowed,
    document_pieces,
    flash_chunk_attention,
    flash_varlen_chunk_attention,
    pick_chunk_kernel,
    reference_chunk_attention,
    reference_varlen_chunk_attention,
)
from gemma3_runtime.parallel.context_attention import allowed_by_position, emulated_context_attention

pytestmark = pytest.mark.unit

SCALE = 6.0**-0.5


def _segment_ids(seq_len: int, boundaries: set[int], padded: bool) -> list[int]:
    """Ids 1, 2, ... per document (a boundary b starts a document at position b); with `padded` the last run is the
    tail padding, id 0 (data/sft.py's layout)."""
    ids = [1 + sum(b <= p for b in boundaries) for p in range(seq_len)]
    if padded and boundaries:
        ids = [0 if i == ids[-1] else i for i in ids]
    return ids


@st.composite
def packings(draw):
    """(cp, window, segment ids [b, S]): CP 1/2/4, chunks of 1-6 tokens, 1-3 rows, windows from 1 to 3 chunks + 2
    or global; boundaries at chunk edges and anywhere, so documents start inside chunks, on their edges, or span
    several."""
    cp = draw(st.sampled_from([1, 2, 4]))
    length = draw(st.integers(1, 6))
    seq_len = 2 * cp * length
    window = draw(st.one_of(st.none(), st.integers(1, 3 * length + 2)))
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        edges = draw(st.sets(st.sampled_from(range(length, seq_len, length))))
        inner = draw(st.sets(st.integers(1, seq_len - 1), max_size=4)) if seq_len > 1 else set()
        rows.append(_segment_ids(seq_len, edges | inner, draw(st.booleans())))
    return cp, window, torch.tensor(rows)


def _full(q, k, v, window, segments):
    mask = allowed_mask(q.shape[1], k.shape[1], window, AttentionContext(segment_ids=segments), q.device)
    q_, k_, v_ = (t.transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask, scale=SCALE, enable_gqa=True).transpose(1, 2)


def _close(ours, ref, tolerance=1e-5) -> bool:
    """Normwise relative, with an absolute floor for gradients that are zero in exact arithmetic (a query that sees
    only itself has dQ = 0, and the reference holds rounding noise)."""
    return float((ours - ref).norm()) <= tolerance * float(ref.norm()) + tolerance


def _with_grads(attend, q, k, v, upstream):
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attend(*inputs)
    out.backward(upstream)
    return [out.detach(), *(t.grad for t in inputs)]


# documents inside chunks / on chunk edges / spanning several chunks, windows inside and beyond a chunk, b > 1
EXAMPLES = [
    (2, 3, torch.tensor([_segment_ids(24, {5, 14}, True), _segment_ids(24, {6, 12}, False)])),
    (4, 11, torch.tensor([_segment_ids(32, {2, 29}, False), _segment_ids(32, {4, 8, 12, 16, 20}, True)])),
    (4, None, torch.tensor([_segment_ids(48, {30}, True), _segment_ids(48, set(), False)])),
    (2, 1, torch.tensor([_segment_ids(16, {1, 2, 3, 15}, False)])),
]


@settings(max_examples=60, deadline=None)
@given(packing=packings(), seed=st.integers(0, 2**16))
@example(packing=EXAMPLES[0], seed=0)
@example(packing=EXAMPLES[1], seed=1)
@example(packing=EXAMPLES[2], seed=2)
@example(packing=EXAMPLES[3], seed=3)
def test_reference_varlen_kernel_equals_the_masked_path(packing, seed):
    """The varlen kernel's layout with plain torch per piece, in the fused kernel's slot: equal to the masked
    per-chunk path and to full attention (fp32; output, dQ, dK, dV)."""
    cp, window, segments = packing
    batch, seq_len = segments.shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq_len, 4, 8, generator=gen)
    k, v = (torch.randn(batch, seq_len, 2, 8, generator=gen) for _ in range(2))
    upstream = torch.randn(batch, seq_len, 4, 8, generator=gen)
    pieces_seen = []

    def counted(q_chunk, k_range, v_range, window, scale, key_segments):
        assert key_segments is not None and key_segments.shape == k_range.shape[:2]
        pieces_seen.append(document_pieces(key_segments, q_chunk.shape[1]).cu_seqlens_q.numel() - 1)
        return reference_varlen_chunk_attention(q_chunk, k_range, v_range, window, scale, key_segments)

    def emulated(kernel):
        return lambda a, b, c: emulated_context_attention(
            a, b, c, cp_size=cp, window=window, scale=SCALE, segment_ids=segments, chunk_kernel=kernel
        )

    varlen = _with_grads(emulated(counted), q, k, v, upstream)
    masked = _with_grads(emulated(None), q, k, v, upstream)
    full = _with_grads(lambda a, b, c: _full(a, b, c, window, segments), q, k, v, upstream)
    assert len(pieces_seen) == 2 * cp  # every chunk of every rank went through the varlen kernel
    for ours, theirs, ref in zip(varlen, masked, full, strict=True):
        assert _close(ours, theirs, 1e-6)
        assert _close(ours, ref)


def _mask_from_pieces(key_segments: torch.Tensor, q_len: int, window) -> torch.Tensor:
    """[b, L, K] the mask the pieces imply: each piece a bottom-right band block, nothing across pieces."""
    batch, k_len = key_segments.shape
    pieces = document_pieces(key_segments, q_len)
    cu_q, cu_k = pieces.cu_seqlens_q.tolist(), pieces.cu_seqlens_k.tolist()
    row_key_base = [0]
    for start in pieces.key_starts:
        row_key_base.append(row_key_base[-1] + k_len - start)
    mask = torch.zeros(batch, q_len, k_len, dtype=torch.bool)
    for q0, q1, k0, k1 in zip(cu_q[:-1], cu_q[1:], cu_k[:-1], cu_k[1:], strict=True):
        row = q0 // q_len
        assert q1 > q0 and k1 - k0 >= q1 - q0  # every piece kept has a query, and its queries are its last keys
        first_key = pieces.key_starts[row] + k0 - row_key_base[row]
        block = bottom_right_allowed(q1 - q0, k1 - k0, window)
        mask[row, q0 - row * q_len : q1 - row * q_len, first_key : first_key + k1 - k0] = block
    assert cu_q[-1] == batch * q_len and cu_k[-1] == row_key_base[-1]
    assert pieces.max_q == max(b - a for a, b in zip(cu_q, cu_q[1:], strict=False))
    assert pieces.max_k == max(b - a for a, b in zip(cu_k, cu_k[1:], strict=False))
    return mask


@settings(max_examples=200, deadline=None)
@given(
    k_len=st.integers(1, 40),
    q_frac=st.floats(0.0, 1.0),
    window=st.one_of(st.none(), st.integers(1, 45)),
    rows=st.lists(st.tuples(st.sets(st.integers(1, 39), max_size=6), st.booleans()), min_size=1, max_size=3),
)
def test_pieces_give_the_masked_paths_mask_exactly(k_len, q_frac, window, rows):
    """For any key range, chunk length and packing: the block-diagonal bands of the pieces are the masked path's
    mask (allowed_by_position on the chunk's positions, segments included), bit for bit."""
    q_len = max(1, round(q_frac * k_len))
    key_segments = torch.tensor([_segment_ids(k_len, {b for b in cuts if b < k_len}, pad) for cuts, pad in rows])
    positions = torch.arange(k_len)
    expected = allowed_by_position(
        positions[k_len - q_len :], positions, window, key_segments[:, k_len - q_len :], key_segments
    )
    assert torch.equal(_mask_from_pieces(key_segments, q_len, window), expected.expand(len(rows), -1, -1))


def test_pieces_drop_earlier_documents_and_pack_rows():
    """Row 0: ids 1 (5), 2 (9), 3 (10), padding 0 (8); key range [0, 24), queries 16..23 all in document 3, which
    starts at key 14. Row 1: two documents of 16; the queries lie in the second, starting at key 16."""
    seg = torch.tensor([[1] * 5 + [2] * 9 + [3] * 10 + [0] * 8, [1] * 16 + [2] * 16])[:, :24]
    pieces = document_pieces(seg, 8)
    assert pieces.cu_seqlens_q.tolist() == [0, 8, 16] and pieces.cu_seqlens_k.tolist() == [0, 10, 18]
    assert (pieces.max_q, pieces.max_k, pieces.key_starts) == (8, 10, (14, 16))
    assert pieces.cu_seqlens_q.dtype == torch.int32
    keys = torch.arange(2 * 24).view(2, 24, 1, 1)
    assert pieces.pack_keys(keys).flatten().tolist() == list(range(14, 24)) + list(range(24 + 16, 48))
    assert document_pieces(seg[:1], 8).pack_keys(keys[:1])._base is not None  # b == 1: a view of the key range, no copy


def test_a_document_split_into_two_runs_is_refused():
    """The masked path joins every key with the same id; pieces are contiguous runs: refuse when they differ."""
    with pytest.raises(ValueError, match="one contiguous run"):
        document_pieces(torch.tensor([[1, 1, 2, 2, 1, 1]]), 2)


class _FlashCalls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._flash_attention_forward.default, torch.ops.aten._flash_attention_backward.default):
            self.calls.append((func, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


def test_fused_varlen_call_and_its_autograd_on_meta_tensors():
    """The fused varlen kernel's call, on meta tensors (the op's shape functions; no kernel runs): packed [total, h,
    d] rows, int32 cu_seqlens on the device, the pieces' max lengths, causal + window (W - 1, 0); and the backward
    that aten's autograd formula derives passes the same cu_seqlens, lengths and window to the varlen backward."""
    seg = torch.tensor([[1] * 5 + [2] * 9 + [3] * 10, [1] * 16 + [2] * 8])
    q, upstream = (torch.empty(2, 8, 4, 64, device="meta", dtype=torch.bfloat16) for _ in range(2))
    k, v = (torch.empty(2, 24, 2, 64, device="meta", dtype=torch.bfloat16) for _ in range(2))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    with _FlashCalls() as recorded:
        out = flash_varlen_chunk_attention(q, k, v, 5, SCALE, seg)
        out.backward(upstream)
    assert out.shape == q.shape and k.grad.shape == k.shape
    (fwd, fwd_args, fwd_kw), (bwd, bwd_args, bwd_kw) = recorded.calls
    assert fwd is torch.ops.aten._flash_attention_forward.default
    assert bwd is torch.ops.aten._flash_attention_backward.default
    fq, fk, fv, cu_q, cu_k, max_q, max_k, _, causal = fwd_args[:9]
    assert (fq.shape, fk.shape, fv.shape) == ((16, 4, 64), (18, 2, 64), (18, 2, 64))
    assert cu_q.device.type == "meta" and cu_q.dtype == cu_k.dtype == torch.int32 and cu_q.shape == (3,)
    assert (max_q, max_k, causal) == (8, 10, True)
    assert (fwd_kw["window_size_left"], fwd_kw["window_size_right"], fwd_kw["scale"]) == (4, 0, SCALE)
    assert bwd_args[6] is cu_q and bwd_args[7] is cu_k and tuple(bwd_args[8:10]) == (8, 10) and bwd_args[11] is True
    assert (bwd_kw["window_size_left"], bwd_kw["window_size_right"], bwd_kw["scale"]) == (4, 0, SCALE)


def test_auto_takes_the_masked_path_on_cpu_and_band_kernels_refuse_documents():
    q = torch.zeros(1, 4, 2, 8)
    assert pick_chunk_kernel(q, packed=False) is None  # CPU fp32: no fused kernel
    assert pick_chunk_kernel(q, packed=True) is None
    segments = torch.zeros(1, 4, dtype=torch.long)
    for band in (reference_chunk_attention, flash_chunk_attention):
        with pytest.raises(ValueError, match="need a varlen chunk kernel"):
            emulated_context_attention(
                q,
                q[:, :, :1],
                q[:, :, :1],
                cp_size=1,
                window=None,
                scale=SCALE,
                segment_ids=segments,
                chunk_kernel=band,
            )

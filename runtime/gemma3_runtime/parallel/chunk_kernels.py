"""Per-chunk attention kernels for context parallelism (batch-first: q [b, L, hq, d], k/v [b, K, hkv, d]).

A CP query chunk's L queries are the LAST L positions of its key range of K >= L contiguous positions (context_attention
.key_range), so without packed documents its mask is bottom-right-aligned causal attention, plus the sliding window:
query i (global position start + K - L + i) sees key j (position start + j) iff K - L + i - W < j <= K - L + i.
That is exactly FlashAttention-2's masking for sq != sk with `is_causal` (aligned to the bottom-right corner since
FA 2.1; torch.nn.attention.bias.causal_lower_right relies on the same) and `window_size=(W-1, 0)`, so on CUDA the
chunk runs on the fused kernel: no [L, K] score scratch, and only the blocks inside the band are computed.

Packed documents (segment ids): documents are contiguous, and the key range ends at the chunk's last position, so
within one chunk each document piece's queries are the LAST rows of its keys - bottom-right causal (+ window) again,
per piece. The chunk then runs as ONE FlashAttention-2 varlen call (cu_seqlens over the pieces of every batch row,
`document_pieces`); pieces with keys but no queries in the chunk (earlier documents) are dropped.

Every kernel here has one signature, (q_chunk, k_range, v_range, window, scale, key_segments) -> like q_chunk
(key_segments: [b, K] segment ids of the key range, or None without packed documents; the queries' ids are its last L
columns), so that the index arithmetic around it (which keys a chunk gets, which pieces it splits into) is tested on
CPU with the `reference_*` kernels plugged in where the fused ones go; the kernel calls themselves are the only
GPU-only piece.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

ChunkKernel = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, "int | None", float, "torch.Tensor | None"], torch.Tensor
]


def flash_window_supported(q: torch.Tensor) -> bool:
    """Whether FlashAttention-2's kernel (aten._flash_attention_forward) takes these queries: CUDA, half precision,
    head_dim <= 256 and a multiple of 8. The one definition: perf/attention.py asks it too."""
    return q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] <= 256 and q.shape[-1] % 8 == 0


def bottom_right_allowed(q_len: int, k_len: int, window: int | None, device=None) -> torch.Tensor:
    """[L, K] bool: query i sees key j iff j <= i + K - L (and j > i + K - L - W for a window W)."""
    offset = k_len - q_len
    i = torch.arange(q_len, device=device)[:, None] + offset
    j = torch.arange(k_len, device=device)[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & (j > i - window)
    return allowed


def _band_only(key_segments: torch.Tensor | None) -> None:
    if key_segments is not None:
        raise ValueError("a band chunk kernel has no document pieces; packed documents need a varlen chunk kernel")


def reference_chunk_attention(q_chunk, k_range, v_range, window: int | None, scale: float, key_segments=None):
    """Plain torch bottom-right causal (+ window) attention, fp32 softmax, GQA by repeated kv heads (tests)."""
    _band_only(key_segments)
    groups = q_chunk.shape[2] // k_range.shape[2]
    q_, k_, v_ = (t.transpose(1, 2) for t in (q_chunk, k_range, v_range))
    if groups > 1:
        k_, v_ = k_.repeat_interleave(groups, dim=1), v_.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q_, k_.transpose(-1, -2)) * scale
    allowed = bottom_right_allowed(q_.shape[2], k_.shape[2], window, q_chunk.device)
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q_chunk.dtype)
    return torch.matmul(probs, v_).transpose(1, 2)


def _flash_left(window: int | None, k_len: int) -> int:
    """FlashAttention's window_size_left for Gemma's window W (keys q - W < k <= q); -1 = unlimited."""
    return -1 if window is None or window >= k_len else window - 1


def flash_chunk_attention(q_chunk, k_range, v_range, window: int | None, scale: float, key_segments=None):
    """FlashAttention-2 (aten._flash_attention_forward, the kernel behind SDPA's flash backend, with its own
    autograd formula) on one chunk: bottom-right causal for sq < sk, FA's window for sliding layers, GQA native.
    The batch-first chunk layout is the kernel's own ([b, s, h, d], last dim contiguous)."""
    _band_only(key_segments)
    q_len, k_len = q_chunk.shape[1], k_range.shape[1]
    return torch.ops.aten._flash_attention_forward(
        q_chunk,
        k_range,
        v_range,
        None,
        None,
        q_len,
        k_len,
        0.0,
        True,
        False,
        scale=scale,
        window_size_left=_flash_left(window, k_len),
        window_size_right=0,
    )[0]


@dataclass(frozen=True)
class DocumentPieces:
    """One chunk's document pieces, packed batch-major: queries are all b*L rows of the chunk in order (every query
    lies in exactly one piece); keys are, per batch row r, the rows [key_starts[r], K) of the key range (the pieces
    that hold a query; earlier documents are dropped)."""

    cu_seqlens_q: torch.Tensor  # int32 [n+1], offsets of the pieces' queries in the packed b*L rows
    cu_seqlens_k: torch.Tensor  # int32 [n+1], offsets of the pieces' keys in the packed key rows
    max_q: int
    max_k: int
    key_starts: tuple[int, ...]  # per batch row, the first key (index in the key range) of its first kept piece

    def pack_keys(self, k_range: torch.Tensor) -> torch.Tensor:
        """[b, K, h, d] -> [total_k, h, d], the kept key rows of every batch row (a view for b == 1)."""
        rows = [k_range[r, start:] for r, start in enumerate(self.key_starts)]
        return rows[0] if len(rows) == 1 else torch.cat(rows)


def document_pieces(key_segments: torch.Tensor, q_len: int, device=None) -> DocumentPieces:
    """The varlen layout of one chunk from the segment ids of its key range ([b, K]; the queries are the last q_len
    keys). A piece is a maximal run of one id that holds at least one query; its queries are the last rows of its
    keys, so each piece is a bottom-right aligned causal (+ window) block. That is the masked path's rule (same id,
    causal, window) whenever no id occurs in two separate runs of a row's key range (packing gives 1, 2, ... per
    document and 0 for the tail padding); a key range where one does is refused. Computed on the host from one copy
    of the ids (the kernel needs max_q / max_k as integers anyway); the offsets go to `device`."""
    seg = key_segments.detach().cpu()
    batch, k_len = seg.shape
    offset = k_len - q_len  # key index of the first query
    new_run = torch.ones_like(seg, dtype=torch.bool)
    new_run[:, 1:] = seg[:, 1:] != seg[:, :-1]
    rows, starts = new_run.nonzero(as_tuple=True)  # row-major: pieces in packed order
    run_ids = torch.stack([rows, seg[rows, starts]], dim=1)
    if torch.unique(run_ids, dim=0).shape[0] != run_ids.shape[0]:
        raise ValueError("segment_ids: each packed document must be one contiguous run of its id within a row")
    key_index = torch.arange(k_len)
    run_start = torch.where(new_run, key_index, 0).cummax(dim=1).values
    first = run_start[:, offset]  # [b] start of the run holding the chunk's first query
    kept = starts >= first[rows]
    rows, starts = rows[kept], starts[kept]
    keys_per_row = k_len - first
    key_base = keys_per_row.cumsum(0) - keys_per_row
    cu_k = torch.cat([key_base[rows] + starts - first[rows], keys_per_row.sum().view(1)])
    cu_q = torch.cat([rows * q_len + (starts - offset).clamp(min=0), torch.tensor([batch * q_len])])
    return DocumentPieces(
        cu_seqlens_q=cu_q.to(device=device, dtype=torch.int32),
        cu_seqlens_k=cu_k.to(device=device, dtype=torch.int32),
        max_q=int(cu_q.diff().max()),
        max_k=int(cu_k.diff().max()),
        key_starts=tuple(first.tolist()),
    )


PackedAttention = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, DocumentPieces, "int | None", float], torch.Tensor
]


def _flash_packed(q, k, v, pieces: DocumentPieces, window: int | None, scale: float) -> torch.Tensor:
    """FlashAttention-2's varlen form on packed [total, h, d] rows: bottom-right causal + window per piece. The aten
    op's autograd formula passes the same cu_seqlens / max lengths / window to _flash_attention_backward."""
    return torch.ops.aten._flash_attention_forward(
        q,
        k,
        v,
        pieces.cu_seqlens_q,
        pieces.cu_seqlens_k,
        pieces.max_q,
        pieces.max_k,
        0.0,
        True,
        False,
        scale=scale,
        window_size_left=_flash_left(window, pieces.max_k),
        window_size_right=0,
    )[0]


def _reference_packed(q, k, v, pieces: DocumentPieces, window: int | None, scale: float) -> torch.Tensor:
    """The same packed layout, one `reference_chunk_attention` per piece (tests)."""
    cu_q, cu_k = pieces.cu_seqlens_q.tolist(), pieces.cu_seqlens_k.tolist()
    outputs = [
        reference_chunk_attention(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], window, scale)[0]
        for q0, q1, k0, k1 in zip(cu_q[:-1], cu_q[1:], cu_k[:-1], cu_k[1:], strict=True)
    ]
    return torch.cat(outputs)


def _attend_pieces(q_chunk, k_range, v_range, window, scale, key_segments, packed: PackedAttention) -> torch.Tensor:
    """Flatten the chunk into its document pieces, run `packed` once, and give the rows back in q_chunk's shape."""
    batch, q_len, heads, head_dim = q_chunk.shape
    pieces = document_pieces(key_segments, q_len, q_chunk.device)
    k_packed, v_packed = pieces.pack_keys(k_range), pieces.pack_keys(v_range)
    out = packed(q_chunk.reshape(batch * q_len, heads, head_dim), k_packed, v_packed, pieces, window, scale)
    return out.view(batch, q_len, heads, head_dim)


def flash_varlen_chunk_attention(q_chunk, k_range, v_range, window: int | None, scale: float, key_segments=None):
    """The fused kernel for a chunk with packed documents: one FlashAttention-2 varlen call over its pieces (without
    segment ids, the band kernel)."""
    if key_segments is None:
        return flash_chunk_attention(q_chunk, k_range, v_range, window, scale)
    return _attend_pieces(q_chunk, k_range, v_range, window, scale, key_segments, _flash_packed)


def reference_varlen_chunk_attention(q_chunk, k_range, v_range, window: int | None, scale: float, key_segments=None):
    """`flash_varlen_chunk_attention`'s layout with plain torch per piece (tests; runs on CPU)."""
    if key_segments is None:
        return reference_chunk_attention(q_chunk, k_range, v_range, window, scale)
    return _attend_pieces(q_chunk, k_range, v_range, window, scale, key_segments, _reference_packed)


def fused_chunk_supported(q: torch.Tensor) -> bool:
    """The fused kernels' conditions (CUDA, bf16/fp16, head_dim <= 256 and a multiple of 8); batch-first q."""
    return flash_window_supported(q)


def pick_chunk_kernel(q: torch.Tensor, packed: bool) -> ChunkKernel | None:
    """The fused chunk kernel where it applies (the varlen form for packed documents), else None (context_attention's
    masked path)."""
    if not fused_chunk_supported(q):
        return None
    return flash_varlen_chunk_attention if packed else flash_chunk_attention

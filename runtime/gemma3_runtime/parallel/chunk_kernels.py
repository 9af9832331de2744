"""Per-chunk attention kernels for context parallelism (batch-first: q [b, L, hq, d], k/v [b, K, hkv, d]).

A CP query chunk's L queries are the LAST L positions of its key range of K >= L contiguous positions (context_attention
.key_range), so without packed documents its mask is bottom-right-aligned causal attention, plus the sliding window:
query i (global position start + K - L + i) sees key j (position start + j) iff K - L + i - W < j <= K - L + i.
That is exactly FlashAttention-2's masking for sq != sk with `is_causal` (aligned to the bottom-right corner since
FA 2.1; torch.nn.attention.bias.causal_lower_right relies on the same) and `window_size=(W-1, 0)`, so on CUDA the
chunk runs on the fused kernel: no [L, K] score scratch, and only the blocks inside the band are computed.

Every kernel here has one signature, (q_chunk, k_range, v_range, window, scale) -> like q_chunk, so that the index
arithmetic around it (which keys a chunk gets) is tested on CPU with `reference_chunk_attention` plugged in where the
fused kernel goes; the kernel call itself is the only GPU-only piece.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ChunkKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "int | None", float], torch.Tensor]


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


def reference_chunk_attention(q_chunk, k_range, v_range, window: int | None, scale: float) -> torch.Tensor:
    """Plain torch bottom-right causal (+ window) attention, fp32 softmax, GQA by repeated kv heads (tests)."""
    groups = q_chunk.shape[2] // k_range.shape[2]
    q_, k_, v_ = (t.transpose(1, 2) for t in (q_chunk, k_range, v_range))
    if groups > 1:
        k_, v_ = k_.repeat_interleave(groups, dim=1), v_.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q_, k_.transpose(-1, -2)) * scale
    allowed = bottom_right_allowed(q_.shape[2], k_.shape[2], window, q_chunk.device)
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q_chunk.dtype)
    return torch.matmul(probs, v_).transpose(1, 2)


def flash_chunk_attention(q_chunk, k_range, v_range, window: int | None, scale: float) -> torch.Tensor:
    """FlashAttention-2 (aten._flash_attention_forward, the kernel behind SDPA's flash backend, with its own
    autograd formula) on one chunk: bottom-right causal for sq < sk, FA's window for sliding layers, GQA native.
    The batch-first chunk layout is the kernel's own ([b, s, h, d], last dim contiguous)."""
    q_len, k_len = q_chunk.shape[1], k_range.shape[1]
    left = -1 if window is None or window >= k_len else window - 1
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
        window_size_left=left,
        window_size_right=0,
    )[0]


def fused_chunk_supported(q: torch.Tensor) -> bool:
    """The fused kernel's conditions (CUDA, bf16/fp16, head_dim <= 256 and a multiple of 8); batch-first q."""
    return flash_window_supported(q)


def pick_chunk_kernel(q: torch.Tensor, packed: bool) -> ChunkKernel | None:
    """The fused chunk kernel where it applies, else None (context_attention's masked path). Packed documents keep
    the masked path: their mask is not a band."""
    return None if packed or not fused_chunk_supported(q) else flash_chunk_attention

"""Gemma 3 attention over the KV cache: scale query_pre_attn_scalar^-0.5, GQA without copying K/V in decode,
boolean masks, torch SDPA on CPU and CUDA (fused kernels; capturable in a CUDA graph).

Decode folds the H/G query heads of a group into the query-length axis, [b, H, 1, d] -> [b, G, H/G, d], so a
group's keys are read once for all its heads (decode is bandwidth bound) and the call is a plain SDPA.

The compiled CUDA decode step uses `step_attention_matmul` instead: for a 4-row query (the 1B: 4 heads, 1 kv head)
SDPA picks a flash kernel with 64-row tiles that runs as ONE thread block per kv head, a large share of the whole
step; two small matmuls around a softmax that inductor fuses with the mask are much faster there
(docs/PERFORMANCE.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prompt_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """query [b, H, P, d], key/value [b, G, P, d], mask [b, 1, P, P] bool -> [b, H, P, d]."""
    heads, groups = query.size(1), key.size(1)
    if query.is_cuda and heads != groups:
        # CUDA's masked (memory-efficient) kernel has no GQA path; torch would fall back to the math kernel
        key = key.repeat_interleave(heads // groups, dim=1)
        value = value.repeat_interleave(heads // groups, dim=1)
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, scale=scale, enable_gqa=key.size(1) != heads
    )


def step_attention(
    query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """query [b, H, 1, d], caches [b, G, slots, d], mask [b, 1, 1, slots] bool or None (all visible) -> [b, H, 1, d]."""
    b, heads, _, d = query.shape
    grouped = query.reshape(b, key_cache.size(1), heads // key_cache.size(1), d)
    out = F.scaled_dot_product_attention(grouped, key_cache, value_cache, attn_mask=mask, scale=scale)
    return out.reshape(b, heads, 1, d)


def step_attention_matmul(
    query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """`step_attention` as q K^T -> masked softmax in fp32 -> P V (for the compiled step; see the module doc)."""
    b, heads, _, d = query.shape
    grouped = query.reshape(b, key_cache.size(1), heads // key_cache.size(1), d)
    scores = torch.matmul(grouped, key_cache.transpose(-1, -2)).float() * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value_cache.dtype)
    return torch.matmul(probs, value_cache).reshape(b, heads, 1, d)

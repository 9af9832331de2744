"""Gemma 3 attention over the KV cache: scale query_pre_attn_scalar^-0.5, GQA without copying K/V, boolean masks.

GQA: the H/G query heads of a group are folded next to the query axis, so a group's keys are read once for all
its heads (decode is bandwidth bound) and K/V are never repeated.
Kernels: on CUDA torch SDPA (fused, and capturable in a CUDA graph); on CPU plain matmuls with an fp32 softmax
(HF's eager recipe) - torch's CPU SDPA with a mask was measured ~100x slower than that for decode-sized queries
(154 ms per call on the 270M, 2 cores).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _matmul_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """query [b, G, n, sq, d], key/value [b, G, 1, sk, d], mask broadcastable to [b, G, n, sq, sk]."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    return torch.matmul(probs, value)


def prompt_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """query [b, H, P, d], key/value [b, G, P, d], mask [b, 1, P, P] bool -> [b, H, P, d]."""
    b, heads, width, d = query.shape
    groups = key.size(1)
    if query.is_cuda:
        if heads != groups:  # CUDA's masked (memory-efficient) kernel has no GQA path; math would be the fallback
            key = key.repeat_interleave(heads // groups, dim=1)
            value = value.repeat_interleave(heads // groups, dim=1)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
    out = _matmul_attention(query.reshape(b, groups, heads // groups, width, d), key.unsqueeze(2),
                            value.unsqueeze(2), mask.unsqueeze(2), scale)
    return out.reshape(b, heads, width, d)


def step_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, mask: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """query [b, H, 1, d], caches [b, G, slots, d], mask [b, 1, 1, slots] bool -> [b, H, 1, d]."""
    b, heads, _, d = query.shape
    groups = key_cache.size(1)
    grouped = query.reshape(b, groups, heads // groups, d)  # the group's heads play the role of query positions
    if query.is_cuda:
        out = F.scaled_dot_product_attention(grouped, key_cache, value_cache, attn_mask=mask, scale=scale)
    else:
        out = _matmul_attention(grouped.unsqueeze(3), key_cache.unsqueeze(2), value_cache.unsqueeze(2),
                                mask.unsqueeze(2), scale)
    return out.reshape(b, heads, 1, d)

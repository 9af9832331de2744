"""Gemma 3 attention: ONE core-attention module with Gemma semantics and selectable kernels.

Semantics (docs/MODEL.md):
- sliding layers: query q sees key k iff q - W < k <= q (W keys INCLUDING the query itself); global layers: causal.
  Which layer is which comes from `layer_types` indexed by megatron's 1-based `layer_number` - 1.
- scores scaled by query_pre_attn_scalar ** -0.5 (not head_dim ** -0.5); GQA by sharing kv heads.
- sq <= sk: the queries are the LAST sq of the sk key positions (KV-cached decoding). Mask positions are key
  INDICES; in a left-padded batch the index distance equals the position distance, so windows stay right.
- optional key-padding mask [b, sk] (True/1 = real token) and segment ids [b, s] (packed sequences: no attention
  across segments). A query never has an empty row: it may always see itself, so padded rows stay finite.
Kernels: "sdpa" (torch scaled_dot_product_attention with a boolean mask), "flex" (flex attention with a block
mask), "eager" (matmul + fp32 softmax, HF's eager path; the reference for parity).
Context parallelism: a context carrying a `ContextParallelState` sends every layer, whatever its kernel, to
`context_parallel_attention` (this rank's zigzag share of the queries; docs/CONTEXT_PARALLEL.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.module import MegatronModule

from ..parallel.context_attention import ContextParallelState, context_parallel_attention
from .kv_cache import KVCache
from .rope import GLOBAL, LOCAL, apply_rotary

KERNELS = ("sdpa", "flex", "eager", "auto")
# "auto": the `plain_attention` hook whenever the mask is plain causal/window (no padding, segments, KV cache) and
# the speed layer has filled it (gemma3_runtime.perf.apply: cuDNN's fused kernels where loaded, else SDPA is_causal
# for global layers and FlashAttention-2's native sliding window for local ones); "sdpa" otherwise.

#: the `plain_attention` hook's signature: (q, k, v, *, window, scale) -> out, all [b, heads, s, d]
PlainAttention = Callable[..., torch.Tensor]


@dataclass
class AttentionContext:
    """Per-forward attention inputs shared by all layers.

    It travels through megatron's TransformerBlock in the `packed_seq_params` slot: that argument reaches every
    attention unchanged and, unlike `attention_mask`, is captured by closure (not passed as a tensor argument) when
    megatron recomputes activations, so a plain object is safe there.
    """

    key_padding_mask: torch.Tensor | None = None  # [b, sk] bool, True = real token
    segment_ids: torch.Tensor | None = None  # [b, s] int, packed documents (sq == sk only)
    kv_cache: KVCache | None = None
    masks: dict[Any, Any] = field(default_factory=dict)  # built once per forward, shared by layers of one kind
    #: the decoder's activations are [b, s, ...] instead of megatron's [s, b, ...] (Gemma3Model's training path)
    batch_first: bool = False
    #: context parallelism: this rank holds a zigzag share of each sequence; the state (group, full length, this
    #: rank's segment ids, the cached halo routes) is built once per forward and shared by every layer
    context_parallel: ContextParallelState | None = None


#: the context of a plain batch-major forward (no padding, packing or cache); one shared object, so compiled layers
#: see the same argument every step
BATCH_FIRST = AttentionContext(batch_first=True)


def allowed_mask(sq: int, sk: int, window: int | None, ctx: AttentionContext | None, device) -> torch.Tensor:
    """Boolean [b|1, 1, sq, sk]: True where query i (absolute index sk - sq + i) may attend to key j."""
    q_idx = torch.arange(sk - sq, sk, device=device)[:, None]
    k_idx = torch.arange(sk, device=device)[None, :]
    allowed = k_idx <= q_idx
    if window is not None:
        allowed = allowed & (k_idx > q_idx - window)
    allowed = allowed[None, None]
    extra = None
    if ctx is not None and ctx.key_padding_mask is not None:
        kpm = ctx.key_padding_mask.to(device=device, dtype=torch.bool)
        if kpm.shape[-1] != sk:
            raise ValueError(f"attention_mask has {kpm.shape[-1]} key positions, expected {sk} (cached + new)")
        extra = kpm[:, None, None, :]
    if ctx is not None and ctx.segment_ids is not None:
        seg = ctx.segment_ids.to(device)
        if sq != sk:
            raise ValueError("segment_ids (packed sequences) are for full-sequence forwards, not KV-cached decoding")
        same = seg[:, None, :, None] == seg[:, None, None, :]
        extra = same if extra is None else extra & same
    if extra is not None:
        allowed = (allowed & extra) | (k_idx == q_idx)[None, None]  # never an empty row
    return allowed


def _flex_block_mask(sq: int, sk: int, window: int | None, ctx: AttentionContext | None, batch: int, device):
    from torch.nn.attention.flex_attention import create_block_mask

    offset = sk - sq
    kpm = ctx.key_padding_mask.to(device=device, dtype=torch.bool) if ctx and ctx.key_padding_mask is not None else None
    seg = ctx.segment_ids.to(device) if ctx and ctx.segment_ids is not None else None

    def mask_mod(b, h, q_idx, kv_idx):
        q_abs = q_idx + offset
        ok = kv_idx <= q_abs
        if window is not None:
            ok = ok & (kv_idx > q_abs - window)
        if kpm is not None:
            ok = ok & kpm[b, kv_idx]
        if seg is not None:
            ok = ok & (seg[b, q_idx] == seg[b, kv_idx])
        if kpm is not None or seg is not None:
            ok = ok | (kv_idx == q_abs)
        return ok

    per_row = kpm is not None or seg is not None
    return create_block_mask(mask_mod, batch if per_row else None, None, sq, sk, device=device)


_compiled_flex = None


def _flex_attention(q, k, v, block_mask, scale):
    """flex_attention compiled on CUDA (its eager form is a slow reference); eager on CPU."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    # Compiled only for half precision: torch 2.11's inductor has no fp32 flex-decoding kernel choice when TF32 is
    # off (NoValidChoicesError, e.g. for sq=40), so fp32 runs the eager reference (correct, slower).
    if q.device.type == "cuda" and q.dtype in (torch.bfloat16, torch.float16):
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        return _compiled_flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)
    with warnings.catch_warnings():  # "called without torch.compile": intended on CPU (no fused CPU kernel)
        warnings.simplefilter("ignore", UserWarning)
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)


def _plain(ctx: AttentionContext | None) -> bool:
    return ctx is None or (ctx.key_padding_mask is None and ctx.segment_ids is None)


class Gemma3CoreAttention(MegatronModule):
    """softmax(q k^T * scale + mask) v with Gemma's window/causal semantics; no parameters.

    Constructor and forward follow megatron's core-attention protocol (DotProductAttention's arguments), so it plugs
    into megatron's SelfAttention as `core_attention`. Inputs are [s, b, heads, d]; output [sq, b, heads * d]
    (with a batch-first context: [b, s, heads, d] in, [b, sq, heads * d] out).
    """

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type=None,
        attention_type: str = "self",
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ) -> None:
        super().__init__(config=config)
        self.layer_number = layer_number  # 1-based, global across pipeline stages
        layer_types = config.gemma3_layer_types
        self.is_sliding = layer_types[layer_number - 1] == "sliding_attention"
        self.window = config.gemma3_sliding_window if self.is_sliding else None
        self.softmax_scale = softmax_scale if softmax_scale is not None else config.softmax_scale
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.kernel = config.gemma3_attention_kernel
        if self.kernel not in KERNELS:
            raise ValueError(f"attention kernel {self.kernel!r} is unknown, expected one of {KERNELS}")
        #: hook: the "auto" kernel's plain causal / sliding-window attention, filled by the speed layer
        self.plain_attention: PlainAttention | None = None

    def forward(
        self, query, key, value, attention_mask=None, attn_mask_type=None, attention_bias=None, packed_seq_params=None
    ):
        ctx = packed_seq_params if isinstance(packed_seq_params, AttentionContext) else None
        if attention_bias is not None:
            raise NotImplementedError("Gemma3CoreAttention: attention_bias is not supported")
        batch_first = ctx is not None and ctx.batch_first
        if ctx is not None and ctx.context_parallel is not None:
            return self._context_parallel(query, key, value, ctx)
        if batch_first:
            b, sq, heads, d = query.shape
            sk = key.shape[1]
            to_bhsd, from_bhsd = (0, 2, 1, 3), (0, 2, 1, 3)
        else:
            sq, b, heads, d = query.shape
            sk = key.shape[0]
            to_bhsd, from_bhsd = (1, 2, 0, 3), (2, 0, 1, 3)
        q = query.permute(*to_bhsd)  # [b, h, sq, d]
        k = key.permute(*to_bhsd)
        v = value.permute(*to_bhsd)
        out_shape = (b, sq, heads * d) if batch_first else (sq, b, heads * d)
        dropout = self.dropout_p if self.training else 0.0
        kernel = self.kernel
        if kernel == "auto":
            plain = ctx is None or (ctx.key_padding_mask is None and ctx.segment_ids is None and ctx.kv_cache is None)
            if plain and sq == sk and not dropout and self.plain_attention is not None:
                out = self.plain_attention(q, k, v, window=self.window, scale=self.softmax_scale)
                return out.permute(*from_bhsd).reshape(out_shape)
            kernel = "sdpa"
        cache = ctx.masks if ctx is not None else {}
        key_ = (kernel, sq, sk, self.window)
        if kernel == "flex":
            if dropout:
                raise NotImplementedError("flex kernel: attention dropout is not supported")
            if key_ not in cache:
                cache[key_] = _flex_block_mask(sq, sk, self.window, ctx, b, q.device)
            out = _flex_attention(q, k, v, cache[key_], self.softmax_scale)
        elif kernel == "sdpa" and self.window is None and sq == sk and _plain(ctx):
            # global layer, no padding: a pure causal mask lets torch pick its flash kernel
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, is_causal=True, scale=self.softmax_scale, enable_gqa=True
            )
        else:
            if key_ not in cache:
                cache[key_] = allowed_mask(sq, sk, self.window, ctx, q.device)
            mask = cache[key_]
            if kernel == "sdpa":
                if q.device.type == "cuda" and k.shape[1] != q.shape[1]:
                    # CUDA's masked (memory-efficient) kernel has no GQA path: expand kv heads rather than let
                    # torch fall back to the math kernel
                    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
                    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
                out = F.scaled_dot_product_attention(
                    q,
                    k,
                    v,
                    attn_mask=mask,
                    dropout_p=dropout,
                    scale=self.softmax_scale,
                    enable_gqa=k.shape[1] != q.shape[1],
                )
            else:
                out = self._eager(q, k, v, mask, dropout)
        return out.permute(*from_bhsd).reshape(out_shape)

    def _context_parallel(self, query, key, value, ctx: AttentionContext) -> torch.Tensor:
        """This rank's share of the queries against the keys they need, fetched from the CP group (exact)."""
        if self.training and self.dropout_p:
            raise NotImplementedError("context parallelism: attention dropout is not supported")
        if not ctx.batch_first:  # megatron's [s, b, heads, d] -> [b, s, heads, d]
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        out = context_parallel_attention(
            query, key, value, window=self.window, scale=self.softmax_scale, state=ctx.context_parallel
        )
        b, s, heads, d = out.shape
        if not ctx.batch_first:
            return out.transpose(0, 1).reshape(s, b, heads * d)
        return out.reshape(b, s, heads * d)

    def _eager(self, q, k, v, mask, dropout):
        """HF's eager path: scores in the activation dtype, softmax in fp32, cast back, then weights @ v."""
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.softmax_scale
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        probs = F.dropout(probs, p=dropout, training=dropout > 0)
        return torch.matmul(probs, v)


class Gemma3SelfAttention(SelfAttention):
    """megatron SelfAttention (fused QKV, q/k RMSNorm before RoPE, GQA incl. kv heads < TP) with Gemma's RoPE
    choice per layer (local or global angles from the stacked tensor) and an optional KV cache.

    Only the parts of megatron's forward that Gemma needs are kept: no TE fusions, flash-decode or dynamic-batching
    inference context (our KV cache replaces it), so the same code runs on CPU and CUDA.
    """

    def __init__(
        self, config, submodules, layer_number: int, attn_mask_type=None, cp_comm_type=None, pg_collection=None
    ) -> None:
        kwargs = {} if attn_mask_type is None else {"attn_mask_type": attn_mask_type}
        super().__init__(
            config=config,
            submodules=submodules,
            layer_number=layer_number,
            cp_comm_type=cp_comm_type,
            pg_collection=pg_collection,
            **kwargs,
        )
        self.rope_index = LOCAL if config.gemma3_layer_types[layer_number - 1] == "sliding_attention" else GLOBAL

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        key_value_states=None,
        inference_context=None,
        rotary_pos_emb=None,
        rotary_pos_cos=None,
        rotary_pos_sin=None,
        rotary_pos_cos_sin=None,
        attention_bias=None,
        packed_seq_params=None,
        sequence_len_offset=None,
        *,
        inference_params=None,
    ):
        if inference_context is not None or inference_params is not None:
            raise NotImplementedError(
                "Gemma3SelfAttention: use KVCache (model(..., kv_cache=...)), not megatron's inference context"
            )
        ctx = packed_seq_params if isinstance(packed_seq_params, AttentionContext) else None
        if packed_seq_params is not None and ctx is None:
            raise NotImplementedError(
                "Gemma3SelfAttention: megatron PackedSeqParams are not supported; pass segment_ids to the model instead"
            )
        query, key, value = self.get_query_key_value_tensors(hidden_states, key_value_states)
        if rotary_pos_emb is not None:
            angles = rotary_pos_emb[self.rope_index]
            query = apply_rotary(query, angles)
            key = apply_rotary(key, angles)
        if ctx is not None and ctx.kv_cache is not None:
            key, value = ctx.kv_cache.update(self.layer_number, key, value)
        if self.checkpoint_core_attention and self.training:
            from torch.utils.checkpoint import checkpoint

            core = checkpoint(self.core_attention, query, key, value, None, None, None, ctx, use_reentrant=False)
        else:
            core = self.core_attention(query, key, value, None, packed_seq_params=ctx)
        return self.linear_proj(core)

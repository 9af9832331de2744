"""megatron-core TransformerConfig for Gemma 3: the generic fields plus the Gemma-only ones our modules read."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from .config import Gemma3Config
from .layers import gelu_tanh


@dataclass
class Gemma3TransformerConfig(TransformerConfig):
    """TransformerConfig + Gemma's layer pattern, window and attention kernel (read by Gemma3CoreAttention)."""

    gemma3_layer_types: tuple = ()
    gemma3_sliding_window: int = 0
    gemma3_attention_kernel: str = "sdpa"
    #: the training forward keeps tokens batch-major ([b, s, ...]) through the decoder where it can
    #: (Gemma3Model._batch_first): no layout copies around the flash kernels
    gemma3_batch_first: bool = False


def build_transformer_config(cfg: Gemma3Config, **overrides) -> Gemma3TransformerConfig:
    """Architecture from `cfg`; parallelism, dtype and training knobs from `overrides` (TransformerConfig fields)."""
    params_dtype = overrides.pop("params_dtype", torch.float32)
    values = dict(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.intermediate_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_kv_heads,
        kv_channels=cfg.head_dim,
        softmax_scale=cfg.softmax_scale,
        layernorm_epsilon=cfg.rms_norm_eps,
        normalization="RMSNorm",
        qk_layernorm=True,
        gated_linear_unit=True,
        activation_func=gelu_tanh,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=cfg.initializer_range,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        pipeline_dtype=params_dtype,
        gemma3_layer_types=tuple(cfg.layer_types),
        gemma3_sliding_window=cfg.sliding_window,
    )
    values.update(overrides)
    return Gemma3TransformerConfig(**values)

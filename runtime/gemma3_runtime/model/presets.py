"""The released Gemma 3 text sizes' architectures (Gemma3Config fields; layer types follow the 5:1 pattern).

Torch-free data, read by `Gemma3Config.preset`.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "270m": dict(
        vocab_size=262144,
        hidden_size=640,
        intermediate_size=2048,
        num_layers=18,
        num_attention_heads=4,
        num_kv_heads=1,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=512,
        max_position_embeddings=32768,
    ),
    "1b": dict(
        vocab_size=262144,
        hidden_size=1152,
        intermediate_size=6912,
        num_layers=26,
        num_attention_heads=4,
        num_kv_heads=1,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=512,
        max_position_embeddings=32768,
    ),
    "4b": dict(
        vocab_size=262208,
        hidden_size=2560,
        intermediate_size=10240,
        num_layers=34,
        num_attention_heads=8,
        num_kv_heads=4,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=1024,
        max_position_embeddings=131072,
        rope_global_scaling_factor=8.0,
    ),
    "12b": dict(
        vocab_size=262208,
        hidden_size=3840,
        intermediate_size=15360,
        num_layers=48,
        num_attention_heads=16,
        num_kv_heads=8,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=1024,
        max_position_embeddings=131072,
        rope_global_scaling_factor=8.0,
    ),
    "27b": dict(
        vocab_size=262208,
        hidden_size=5376,
        intermediate_size=21504,
        num_layers=62,
        num_attention_heads=32,
        num_kv_heads=16,
        head_dim=128,
        query_pre_attn_scalar=168,
        sliding_window=1024,
        max_position_embeddings=131072,
        rope_global_scaling_factor=8.0,
    ),
}

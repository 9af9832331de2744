"""Model FLOPs per trained token, counted exactly as the HF anchor (bench/hf_baseline_anchor.py) counts them, so
our MFU and the HF baseline's are comparable: 2 x matmul params (incl. the tied LM head) + causal/windowed attention per
forward, x3 for a full training step (forward + 2x backward), x2 for PEFT (no weight gradients for the frozen base).
Torch-free; bench/ imports it too."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SLIDING = "sliding_attention"

#: dense bf16 peak per GPU (TFLOP/s) used for MFU; keys are matched against the device name
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def train_flops_per_token(
    hidden: int,
    layers: int,
    vocab: int,
    intermediate: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    layer_types: Sequence[str],
    sliding_window: int,
    seq: int,
    peft: bool = False,
) -> float:
    q = heads * head_dim
    kv = kv_heads * head_dim
    dense = layers * (hidden * (q + 2 * kv) + q * hidden + 3 * hidden * intermediate) + hidden * vocab
    attn = 0.0
    for t in layer_types:
        ctx = min(sliding_window, seq) if t == SLIDING else seq / 2
        attn += 2 * 2 * q * ctx
    forward = 2 * dense + attn
    return forward * (2 if peft else 3)


def flops_per_token_for(model_cfg: Any, seq: int, peft: bool = False) -> float:
    """Same count from a Gemma3Config."""
    return train_flops_per_token(
        model_cfg.hidden_size,
        model_cfg.num_layers,
        model_cfg.vocab_size,
        model_cfg.intermediate_size,
        model_cfg.num_attention_heads,
        model_cfg.num_kv_heads,
        model_cfg.head_dim,
        model_cfg.layer_types,
        model_cfg.sliding_window,
        seq,
        peft,
    )


def peak_tflops(device_name: str | None) -> float | None:
    """bf16 dense peak of a GPU by name (None for CPUs and unknown cards: no MFU is reported then)."""
    if not device_name:
        return None
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None

"""Apply a PerfConfig at the four points of a training run: provider, DDP config, built model, optimizer.

The training loop and bench/train_throughput.py call these same functions, so the benchmark measures the step that
users run.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .config import PerfConfig

log = logging.getLogger("gemma3_runtime.perf")


def resolve_compile(perf: PerfConfig, device: torch.device) -> str:
    if perf.compile == "auto":
        return "layers" if device.type == "cuda" else "none"
    return perf.compile


def provider_fields(perf: PerfConfig, tp: int = 1, device: torch.device | None = None) -> dict[str, Any]:
    """Gemma3ModelProvider fields: `attention_kernel` and the `transformer_overrides` entries of the fast paths.

    `device` is needed only for gradient-accumulation fusion (CUDA-only, probed here, before the model is built:
    megatron's linears refuse the flag unless the kernel is installed); without it that switch stays off.
    """
    perf.validate()
    overrides: dict[str, Any] = {
        "gemma3_fused_linear_ce": bool(perf.fused_linear_ce and tp == 1),
        "gemma3_ce_kernel": perf.ce_kernel,
        "gemma3_ce_chunk_bytes": perf.ce_chunk_mib << 20,
        "gemma3_batch_first": bool(perf.batch_first),
    }
    if perf.grad_accum_fusion and device is not None and device.type == "cuda":
        from .grad_fusion import install

        try:
            if install(device):
                overrides["gradient_accumulation_fusion"] = True
        except Exception as exc:  # a lever that cannot be installed is logged, never fatal
            log.warning("grad-accum fusion off: %r", exc)
    return {"attention_kernel": perf.attention, "transformer_overrides": overrides}


def ddp_fields(perf: PerfConfig, data_parallel_size: int) -> dict[str, Any]:
    """megatron DistributedDataParallelConfig fields (overlap needs >1 DP rank to have anything to overlap)."""
    return {"overlap_grad_reduce": bool(perf.overlap_grad_reduce and data_parallel_size > 1)}


def prepare_models(models: list, perf: PerfConfig, device: torch.device, seq_length: int | None = None) -> list[str]:
    """Build the attention masks for `seq_length` and compile the chosen submodules in place (after PEFT and DDP
    wrapping, before the first step). Returns the compiled module names."""
    from .attention import prebuild_masks, prepare_cudnn_attention
    from .compile import compile_model

    if seq_length:
        prebuild_masks(models, seq_length, device)
    cudnn_status = prepare_cudnn_attention(models, device)
    if cudnn_status is not None:
        log.info(
            "core attention: %s",
            "cuDNN fused kernels (sliding window and causal)"
            if not cudnn_status
            else f"FlashAttention-2 / SDPA (cuDNN attention off: {cudnn_status})",
        )
    if perf.fused_geglu and device.type == "cuda":
        from .geglu import use_fused_geglu

        try:
            use_fused_geglu(models)
        except Exception as exc:  # a lever that cannot be installed is logged, never fatal
            log.warning("fused GeGLU off: %r", exc)
    if perf.lora_triton_add and device.type == "cuda":
        from .lora_triton import use_lora_triton_add

        use_lora_triton_add(models)
    options = {"coordinate_descent_tuning": True} if perf.tune_kernels and device.type == "cuda" else None
    return compile_model(models, resolve_compile(perf, device), **({"options": options} if options else {}))


def prepare_optimizer(optimizer: Any, perf: PerfConfig, device: torch.device) -> int:
    """Fused AdamW and foreach grad-norm / clipping on CUDA, and the sync-free step where it applies; returns the
    number of Adam param groups switched."""
    if not perf.fused_adam or device.type != "cuda":
        return 0
    from .optim import sync_free_unsupported, use_foreach_grad_clipping, use_fused_adamw

    use_foreach_grad_clipping()
    inner = getattr(optimizer, "optimizer", optimizer)
    switched = use_fused_adamw(inner)
    if perf.sync_free_optimizer and hasattr(optimizer, "sync_free"):
        reason = sync_free_unsupported(inner)
        optimizer.sync_free = reason is None
        if reason:
            log.info("sync-free optimizer step off: %s", reason)
    return switched

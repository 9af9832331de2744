"""The speed layer: what a PerfConfig changes in a training run, applied at the points where it must be.

Before the model is built: `provider_fields` (attention kernel, batch-major layout, gradient-accumulation fusion)
and `ddp_fields` (gradient-reduce overlap). After it is built and wrapped: `apply` fills the model's named hooks
(`Gemma3CoreAttention.plain_attention`, `Gemma3Model.fused_loss`), prepares the attention kernels, swaps in the fused
GeGLU / LoRA add and compiles the layers. After the optimizer is built: `apply_to_optimizer`. Each returns what it
applied, so the run logs and records exactly which fast paths are in effect. The Trainer and
bench/train_throughput.py run these same functions, so the benchmark measures the step that users run.
"""

from __future__ import annotations

import functools
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
    overrides: dict[str, Any] = {"gemma3_batch_first": bool(perf.batch_first)}
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


def fill_model_hooks(models: list, perf: PerfConfig, plain_attention: Any = None) -> dict[str, int]:
    """Fill the model's named hooks: the "auto" core attentions' plain-mask kernel (`plain_attention`, default
    perf/attention.py's `fast_attention`; a benchmark may pass another) and, with `perf.fused_linear_ce`, the
    chunked linear + CE loss of the last stage. Returns how many of each were filled."""
    from ..model.attention import Gemma3CoreAttention
    from ..model.gemma3_model import Gemma3Model
    from .attention import fast_attention
    from .linear_ce import linear_cross_entropy

    fused_loss = functools.partial(linear_cross_entropy, chunk_bytes=perf.ce_chunk_mib << 20)
    filled = {"plain_attention": 0, "fused_loss": 0}
    for model in models:
        for module in model.modules():
            if isinstance(module, Gemma3CoreAttention) and module.kernel == "auto":
                module.plain_attention = plain_attention or fast_attention
                filled["plain_attention"] += 1
            elif isinstance(module, Gemma3Model) and perf.fused_linear_ce and module.post_process:
                module.fused_loss = fused_loss
                filled["fused_loss"] += 1
    return filled


def apply(
    models: list, perf: PerfConfig, device: torch.device, seq_length: int | None = None, plain_attention: Any = None
) -> dict[str, Any]:
    """The built (and DDP-wrapped) models' fast paths, in place, before the first step: hooks, attention masks and
    the cuDNN probe, fused GeGLU, the float8 linears (perf.fp8), the LoRA Triton add, then torch.compile.
    Returns what was applied."""
    from .attention import prebuild_masks, prepare_cudnn_attention
    from .compile import compile_model

    applied: dict[str, Any] = {"attention": perf.attention, **fill_model_hooks(models, perf, plain_attention)}
    if seq_length:
        prebuild_masks(models, seq_length, device)
    cudnn_status = prepare_cudnn_attention(models, device)
    if cudnn_status is not None:
        applied["cudnn_attention"] = cudnn_status or "on"
    applied["fused_geglu"] = 0
    if perf.fused_geglu and device.type == "cuda":
        from .geglu import use_fused_geglu

        try:
            applied["fused_geglu"] = use_fused_geglu(models)
        except Exception as exc:  # a lever that cannot be installed is logged, never fatal
            log.warning("fused GeGLU off: %r", exc)
    applied["fp8_linears"] = use_fp8(models, perf, device)
    applied["lora_triton_add"] = 0
    if perf.lora_triton_add and device.type == "cuda":
        from .lora_triton import use_lora_triton_add

        applied["lora_triton_add"] = use_lora_triton_add(models)
    compiled = compile_model(models, resolve_compile(perf, device))
    applied["compiled_modules"] = len(compiled)
    return applied


def use_fp8(models: list, perf: PerfConfig, device: torch.device, emulate: bool = False) -> int:
    """perf.fp8's float8 linears (perf/fp8.py), before compilation; how many. Where float8 cannot run (no CUDA
    sm89+, no torchao) the run logs why and keeps bf16. `emulate` (tests) runs torchao's CPU emulation."""
    if perf.fp8 == "none":
        return 0
    from .fp8 import fp8_unsupported, use_fp8_linears

    reason = fp8_unsupported(device, emulate)
    if reason:
        log.warning("fp8 off: %s", reason)
        return 0
    return use_fp8_linears(models, perf.fp8, emulate)


def apply_to_optimizer(optimizer: Any, perf: PerfConfig, device: torch.device) -> dict[str, Any]:
    """Fused AdamW and foreach grad-norm / clipping on CUDA, and the sync-free step where it applies."""
    applied: dict[str, Any] = {"fused_adam_groups": 0, "sync_free_optimizer": False}
    if not perf.fused_adam or device.type != "cuda":
        return applied
    from .optim import sync_free_unsupported, use_foreach_grad_clipping, use_fused_adamw

    use_foreach_grad_clipping()
    inner = getattr(optimizer, "optimizer", optimizer)
    applied["fused_adam_groups"] = use_fused_adamw(inner)
    if perf.sync_free_optimizer and hasattr(optimizer, "sync_free"):
        reason = sync_free_unsupported(inner)
        optimizer.sync_free = reason is None
        applied["sync_free_optimizer"] = reason is None
        if reason:
            log.info("sync-free optimizer step off: %s", reason)
    return applied

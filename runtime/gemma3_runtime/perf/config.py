"""`PerfConfig`: the training run's speed switches (torch-free, so the run config / YAML can hold it).

Every switch changes speed or memory, never the function computed: each fast path has a CPU test against its plain
twin (tests/unit/test_perf_*.py). "auto" values resolve per device in `gemma3_runtime.perf.apply`: the fast paths on
CUDA, the plain ones on CPU (where torch.compile / flex would only cost start-up time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ATTENTION_CHOICES = ("auto", "sdpa", "flex", "eager")
COMPILE_CHOICES = ("auto", "none", "norms", "mlp", "layers")
CE_KERNEL_CHOICES = ("auto", "triton", "compile")  # also linear_cross_entropy's `kernel` argument


@dataclass
class PerfConfig:
    #: core-attention kernel (model/attention.py KERNELS): "auto" = whenever there is no padding / packing / KV cache,
    #: cuDNN's fused attention for both kinds of layer where the nvidia-cudnn-frontend package (the `cuda` extra) is
    #: installed and passes its start-up probe, else FlashAttention-2's own window for sliding layers and SDPA
    #: causal for global ones (perf/attention.py); the model's masked kernels otherwise.
    attention: Literal["auto", "sdpa", "flex", "eager"] = "auto"
    #: chunked linear + cross-entropy for the training loss (TP == 1): no [tokens, 262k] fp32 logits.
    fused_linear_ce: bool = True
    #: its per-chunk loss + gradient pass: "auto" = one hand-written Triton kernel where Triton runs
    #: (perf/ce_triton.py), "compile" = inductor's kernel for the torch formula.
    ce_kernel: Literal["auto", "triton", "compile"] = "auto"
    #: logits per chunk of that loss, in MiB: larger chunks mean fewer passes over the fp32 [262144, D] weight
    #: gradient (+1.2-1.5% from 1 to 2 GiB, +0.4% more at 4 GiB on an H200) for that much more peak memory.
    ce_chunk_mib: int = 2048
    #: torch.compile target: "auto" = "layers" on CUDA, "none" on CPU.
    compile: Literal["auto", "none", "norms", "mlp", "layers"] = "auto"
    #: torch's fused AdamW kernel inside megatron's optimizer (CUDA).
    fused_adam: bool = True
    #: with fused_adam: the optimizer step never reads a value on the host (grad norm stays on the device,
    #: clipping folded into fused Adam's grad_scale; perf/optim.py), so the host can queue the next step meanwhile.
    sync_free_optimizer: bool = True
    #: overlap the DP gradient reduce-scatter with the backward pass (megatron DDP; only matters for DP > 1).
    #: Off by default: not yet measured on two GPUs (docs/PERFORMANCE.md).
    overlap_grad_reduce: bool = False
    #: weight-gradient GEMMs accumulate straight into megatron's fp32 main_grad (megatron's
    #: gradient_accumulation_fusion with a torch shim for apex's kernel, perf/grad_fusion.py). CUDA only, and only
    #: after a runtime probe; off elsewhere. +0.7% on an H200 (docs/PERFORMANCE.md), measured on one GPU only: off by
    #: default until the multi-GPU tests (distributed optimizer, TP=2) have run with it.
    grad_accum_fusion: bool = False
    #: GeGLU as one opaque op whose backward is one Triton kernel and which keeps its output instead of
    #: recomputing it (perf/geglu.py, perf/geglu_triton.py). CUDA only. +3.8% full-parameter, +3.7% LoRA on an H200.
    fused_geglu: bool = True
    #: inductor's coordinate-descent tuning of the compiled layers' Triton kernels (block sizes, warps): +1.0%
    #: full-parameter / +0.6% LoRA on an H200, for ~2.5 minutes more compilation at start-up. Off by default.
    tune_kernels: bool = False
    #: the training forward keeps activations batch-major ([b, s, D], not megatron's [s, b, D]) when it runs on one
    #: tensor/pipeline stage without padding, packing or KV cache: no layout copies around the flash kernels
    #: (Gemma3Model._batch_first).
    batch_first: bool = True
    #: LoRA's `base + h (sB)^T` as one Triton kernel instead of addmm, which first copies base into its output
    #: (perf/lora_triton.py). CUDA only.
    lora_triton_add: bool = True

    def validate(self) -> PerfConfig:
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"perf.attention: expected one of {', '.join(ATTENTION_CHOICES)}, got {self.attention!r}")
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"perf.compile: expected one of {', '.join(COMPILE_CHOICES)}, got {self.compile!r}")
        if not isinstance(self.ce_chunk_mib, int) or isinstance(self.ce_chunk_mib, bool) or self.ce_chunk_mib < 1:
            raise ValueError(f"perf.ce_chunk_mib: expected a positive whole number of MiB, got {self.ce_chunk_mib!r}")
        if self.ce_kernel not in CE_KERNEL_CHOICES:
            raise ValueError(f"perf.ce_kernel: expected one of {', '.join(CE_KERNEL_CHOICES)}, got {self.ce_kernel!r}")
        return self

    @classmethod
    def plain(cls) -> PerfConfig:
        """Every fast path off: the reference configuration the benchmark compares against."""
        return cls(
            attention="sdpa",
            fused_linear_ce=False,
            compile="none",
            fused_adam=False,
            sync_free_optimizer=False,
            overlap_grad_reduce=False,
            grad_accum_fusion=False,
            fused_geglu=False,
            lora_triton_add=False,
            tune_kernels=False,
            batch_first=False,
        )

"""`PerfConfig`: the training run's speed switches (torch-free, so the run config / YAML can hold it).

Every switch changes speed or memory, never the function computed: each fast path has a CPU test against its plain
twin (tests/unit/test_perf_*.py). The one exception is the opt-in `fp8` (float8 operands round the GEMMs' inputs):
its tests bound the difference, and it is judged by its loss beside bf16's over 200 steps (docs/PERFORMANCE.md).
"auto" values resolve per device in `gemma3_runtime.perf.apply` (the speed layer):
the fast paths on CUDA, the plain ones on CPU (where torch.compile would only cost start-up time). These typed
fields are the only things that choose kernels; no environment variable does.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

ATTENTION_CHOICES = ("auto", "sdpa", "flex", "eager")
COMPILE_CHOICES = ("auto", "none", "layers")
FP8_CHOICES = ("none", "tensorwise", "rowwise")


@dataclass
class PerfConfig:
    #: core-attention kernel (model/attention.py KERNELS): "auto" = whenever there is no padding / packing / KV cache,
    #: cuDNN's fused attention for both kinds of layer where the nvidia-cudnn-frontend package (the `cuda` extra) is
    #: installed and passes its start-up probe, else FlashAttention-2's own window for sliding layers and SDPA
    #: causal for global ones (perf/attention.py); the model's masked kernels otherwise.
    attention: Literal["auto", "sdpa", "flex", "eager"] = "auto"
    #: chunked linear + cross-entropy for the training loss (TP == 1): no [tokens, 262k] fp32 logits; its per-chunk
    #: loss + gradient pass is one hand-written Triton kernel where Triton runs (perf/ce_triton.py).
    fused_linear_ce: bool = True
    #: logits per chunk of that loss, in MiB: larger chunks mean fewer passes over the fp32 [262144, D] weight
    #: gradient for that much more peak memory (docs/PERFORMANCE.md).
    ce_chunk_mib: int = 2048
    #: torch.compile target: "auto" = "layers" (every decoder layer) on CUDA, "none" on CPU.
    compile: Literal["auto", "none", "layers"] = "auto"
    #: torch's fused AdamW kernel inside megatron's optimizer (CUDA).
    fused_adam: bool = True
    #: with fused_adam: the optimizer step never reads a value on the host (grad norm stays on the device,
    #: clipping folded into fused Adam's grad_scale; perf/optim.py), so the host can queue the next step meanwhile.
    sync_free_optimizer: bool = True
    #: overlap the DP gradient reduce-scatter with the backward pass (megatron DDP; only matters for DP > 1).
    #: Off by default until it is measured on several GPUs (docs/PERFORMANCE.md).
    overlap_grad_reduce: bool = False
    #: weight-gradient GEMMs accumulate straight into megatron's fp32 main_grad (megatron's
    #: gradient_accumulation_fusion with a torch shim for apex's kernel, perf/grad_fusion.py). CUDA only, and only
    #: after a runtime probe. Off by default until the multi-GPU tests (distributed optimizer, TP=2) run with it.
    grad_accum_fusion: bool = False
    #: GeGLU as one opaque op whose backward is one Triton kernel and which keeps its output instead of
    #: recomputing it (perf/geglu.py, perf/geglu_triton.py). CUDA only.
    fused_geglu: bool = True
    #: the training forward keeps activations batch-major ([b, s, D], not megatron's [s, b, D]) when it runs on one
    #: tensor/pipeline stage without padding, packing or KV cache: no layout copies around the flash kernels
    #: (Gemma3Model._batch_first).
    batch_first: bool = True
    #: LoRA's `base + h (sB)^T` as one Triton kernel instead of addmm, which first copies base into its output
    #: (perf/lora_triton.py). CUDA only.
    lora_triton_add: bool = True
    #: FP8 training (opt-in): the decoder's QKV / proj / fc1 / fc2 weight GEMMs, forward and backward, as torchao
    #: float8 matmuls with dynamic scaling per tensor ("tensorwise") or per row ("rowwise"); LM head and embedding
    #: stay bf16 (perf/fp8.py). CUDA with compute capability >= 8.9 and the `fp8` extra; logged and off elsewhere.
    #: Changes the numerics (float8 operands), unlike every other switch: see docs/PERFORMANCE.md for its loss check.
    fp8: Literal["none", "tensorwise", "rowwise"] = "none"

    def validate(self) -> PerfConfig:
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"perf.attention: expected one of {', '.join(ATTENTION_CHOICES)}, got {self.attention!r}")
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"perf.compile: expected one of {', '.join(COMPILE_CHOICES)}, got {self.compile!r}")
        if self.fp8 not in FP8_CHOICES:
            raise ValueError(f"perf.fp8: expected one of {', '.join(FP8_CHOICES)}, got {self.fp8!r}")
        if not isinstance(self.ce_chunk_mib, int) or isinstance(self.ce_chunk_mib, bool) or self.ce_chunk_mib < 1:
            raise ValueError(f"perf.ce_chunk_mib: expected a positive whole number of MiB, got {self.ce_chunk_mib!r}")
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
            batch_first=False,
            fp8="none",
        )

    @classmethod
    def ablations(cls) -> dict[str, PerfConfig]:
        """{switch: the shipped defaults with that one switch at its plain value}, for every switch the defaults
        turn on (what the benchmark measures as "defaults minus X")."""
        default, plain = cls(), cls.plain()
        return {
            f.name: replace(default, **{f.name: getattr(plain, f.name)})
            for f in fields(cls)
            if getattr(default, f.name) != getattr(plain, f.name)
        }

    @classmethod
    def opt_ins(cls) -> dict[str, PerfConfig]:
        """{name: the shipped defaults plus one switch they leave off}, for every opt-in (what the benchmark
        measures as "defaults plus X"): each off-by-default boolean, and fp8 as "fp8" (tensorwise) and
        "fp8_rowwise"."""
        default = cls()
        found = {f.name: replace(default, **{f.name: True}) for f in fields(cls) if getattr(default, f.name) is False}
        found["fp8"] = replace(default, fp8="tensorwise")
        found["fp8_rowwise"] = replace(default, fp8="rowwise")
        return found

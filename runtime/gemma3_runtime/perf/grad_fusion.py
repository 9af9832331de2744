"""Gradient-accumulation fusion without apex: weight-gradient GEMMs that accumulate into megatron's fp32 main_grad.

WHY: with `gradient_accumulation_fusion=False` (forced without apex) every trainable linear's backward writes a
bf16 weight gradient, and megatron DDP's backward hook then runs `main_grad.add_(param.grad)` - one more kernel that
reads the bf16 gradient and reads + writes the fp32 buffer. On the H200 profile of `fast-mbs4-ga4` that is ~1,050
`add_` launches and ~20 ms per optimizer step. megatron-core's own fused path
(`LinearWithGradAccumulationAndAsyncCommunication.backward` -> `fused_weight_gradient_mlp_cuda.wgrad_gemm_accum_fp32`)
does `main_grad += grad_output^T @ input` in the GEMM itself, marks `weight.grad_added_to_main_grad` so the DDP hook
skips the add, but megatron refuses the config flag when apex's extension is missing. torch >= 2.8 has
`addmm(..., out_dtype=torch.float32)` (bf16 operands, fp32 accumulator/output) on CUDA, which is the same GEMM.

`install()` puts `TorchWgradAccum` (the two functions megatron calls, written with torch ops) into
megatron.core.tensor_parallel.layers, but only on CUDA and only after a probe on tiny tensors shows that one of the
fp32 accumulation forms works; otherwise it logs why and the run keeps the unfused path. Where the in-place form
(`out=main_grad`) is not accepted, the fallback is fp32 GEMM output + `add_` (no bf16 rounding of the gradient, one
extra fp32 pass; still no separate bf16 gradient tensor).

Under torch.compile of the layers, megatron's fused backward mutates Python attributes (`weight.main_grad`,
`weight.grad_added_to_main_grad`) that a traced backward graph would only set once at trace time, so the fused
linear call is kept out of the graph (`torch.compiler.disable`): each fused linear is a graph break, in exchange for
no separate gradient add. Whether that trade pays is what the `fast2-*` / `fast-gaf-*` bench variants measure.
"""

from __future__ import annotations

import functools
import logging
from typing import Optional

import torch

log = logging.getLogger("gemma3_runtime.perf")

_STATE: dict[str, object] = {"installed": False, "mode": None, "reason": None}


def _probe(device: torch.device, mode: str) -> bool:
    """Whether `mode`'s fp32 accumulation of bf16 operands gives acc + a @ b on this device (tiny random inputs)."""
    try:
        g = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(48, 64, device=device, generator=g).to(torch.bfloat16)
        b = torch.randn(48, 32, device=device, generator=g).to(torch.bfloat16)
        acc = torch.randn(64, 32, device=device, generator=g)
        ref = acc + a.float().t() @ b.float()
        _accumulate(acc, a.t(), b, mode)
        return bool(torch.allclose(acc, ref, rtol=1e-3, atol=1e-3))
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        log.info("grad-accum fusion probe %s failed: %s", mode, str(exc).splitlines()[0][:200])
        return False


def _accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, mode: str) -> None:
    """acc (fp32, in place) += a @ b for low-precision a, b, accumulating in fp32.

    - "addmm_out": one GEMM whose epilogue adds into acc (beta=1) - the apex kernel's behaviour;
    - "mm_add":    fp32 GEMM output, then acc.add_ (CUDA fallback when the aliased out= form is refused);
    - "reference": upcast operands, fp32 GEMM, add (CPU: the tests' path, same math).
    """
    if mode == "addmm_out":
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    elif mode == "mm_add":
        acc.add_(torch.mm(a, b, out_dtype=torch.float32))
    elif mode == "reference":
        acc.add_(a.float() @ b.float())
    else:
        raise ValueError(f"unknown accumulation mode {mode!r}")


class TorchWgradAccum:
    """Drop-in for apex's `fused_weight_gradient_mlp_cuda` as megatron-core 0.16.1 calls it:
    `wgrad_gemm_accum_fp32(input [M, K], grad_output [M, N], main_grad [N, K] fp32)` does
    main_grad += grad_output^T @ input; `wgrad_gemm_accum_fp16` the same for a bf16/fp16 main_grad."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def wgrad_gemm_accum_fp32(self, total_input: torch.Tensor, grad_output: torch.Tensor,
                              main_grad: torch.Tensor) -> None:
        if total_input.dtype == torch.float32:
            main_grad.addmm_(grad_output.t(), total_input)
        else:
            _accumulate(main_grad, grad_output.t(), total_input, self.mode)

    def wgrad_gemm_accum_fp16(self, total_input: torch.Tensor, grad_output: torch.Tensor,
                              main_grad: torch.Tensor) -> None:
        main_grad.addmm_(grad_output.t().to(main_grad.dtype), total_input.to(main_grad.dtype))


def _graph_safe_linear(original):
    """megatron's linear function, with its fused-accumulation calls kept out of torch.compile graphs (see module doc).
    Calls without fusion are traced as before (no graph break)."""

    @torch.compiler.disable(recursive=True)
    def fused(*args, **kwargs):
        return original(*args, **kwargs)

    @functools.wraps(original)
    def linear(input, weight, bias, gradient_accumulation_fusion, *args, **kwargs):
        if gradient_accumulation_fusion:
            return fused(input, weight, bias, gradient_accumulation_fusion, *args, **kwargs)
        return original(input, weight, bias, gradient_accumulation_fusion, *args, **kwargs)

    linear.__wrapped_original__ = original  # type: ignore[attr-defined]
    linear.warned = getattr(original, "warned", False)  # type: ignore[attr-defined]
    return linear


def install(device: torch.device, mode: Optional[str] = None) -> bool:
    """Make megatron's `gradient_accumulation_fusion` usable with the torch shim; True when the flag may be set.

    CUDA only (the out_dtype GEMMs have no CPU kernels) unless `mode` is given explicitly (tests pass "reference").
    apex's real extension, when importable, is left in place. Never raises: a failed probe logs and returns False.
    """
    import megatron.core.tensor_parallel.layers as layers

    if getattr(layers, "_grad_accum_fusion_available", False) and not isinstance(
            getattr(layers, "fused_weight_gradient_mlp_cuda", None), TorchWgradAccum):
        _STATE.update(installed=True, mode="apex", reason=None)
        _wrap_linear(layers)
        return True
    if mode is None:
        if device.type != "cuda" or not torch.cuda.is_available():
            _STATE.update(installed=False, mode=None, reason="not CUDA")
            return False
        dev = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        mode = next((m for m in ("addmm_out", "mm_add") if _probe(dev, m)), None)
        if mode is None:
            _STATE.update(installed=False, mode=None, reason="no working fp32-accumulating GEMM form")
            log.warning("grad-accum fusion off: neither addmm(out_dtype=fp32, out=acc) nor mm(out_dtype=fp32) "
                        "works here; keeping the bf16 grad + DDP add path")
            return False
    layers.fused_weight_gradient_mlp_cuda = TorchWgradAccum(mode)
    layers._grad_accum_fusion_available = True
    _wrap_linear(layers)
    _STATE.update(installed=True, mode=mode, reason=None)
    log.info("grad-accum fusion: megatron wgrad GEMMs accumulate into fp32 main_grad (%s)", mode)
    return True


def _wrap_linear(layers) -> None:
    fn = layers.linear_with_grad_accumulation_and_async_allreduce
    if getattr(fn, "__wrapped_original__", None) is None:
        layers.linear_with_grad_accumulation_and_async_allreduce = _graph_safe_linear(fn)


def status() -> dict:
    """What install() decided last: installed, mode ("addmm_out" / "mm_add" / "reference" / "apex"), reason."""
    return dict(_STATE)

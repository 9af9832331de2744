"""Gradient-accumulation fusion without apex: weight-gradient GEMMs that accumulate into megatron's fp32 main_grad.

WHY: with `gradient_accumulation_fusion=False` (forced without apex) every trainable linear's backward writes a
bf16 weight gradient, and megatron DDP's backward hook then runs `main_grad.add_(param.grad)` - one more kernel that
reads the bf16 gradient and reads + writes the fp32 buffer, once per parameter per micro-batch
(docs/PERFORMANCE.md). megatron-core's own fused path
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
`weight.grad_added_to_main_grad`) that a traced backward graph would only set once at trace time. So the plain case
(TP 1, no sequence parallel, no bias, no deferred wgrad - every Gemma 3 linear at TP 1) uses our own linear function
(`_FusedWgradLinear`) whose backward calls the opaque op `gemma3::wgrad_accum(input, grad_output, weight)`: it runs
at every backward (never only at trace time), accumulates into `weight.main_grad`, sets
`weight.grad_added_to_main_grad` and returns an uninitialised dummy gradient (megatron's own trick, so the DDP hook
fires and skips its add). If `weight` carries no `main_grad` at run time it returns the real bf16 gradient instead
(the unfused path, counted in `status()["unfused_calls"]`). Every other case goes to megatron's fused function,
kept out of compiled graphs (`torch.compiler.disable`, a graph break per call).
"""

from __future__ import annotations

import functools
import logging

import torch

from .patches import MEGATRON_PATCHES

log = logging.getLogger("gemma3_runtime.perf")

_STATE: dict[str, object] = {"installed": False, "mode": None, "reason": None, "fused_calls": 0, "unfused_calls": 0}


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

    def wgrad_gemm_accum_fp32(
        self, total_input: torch.Tensor, grad_output: torch.Tensor, main_grad: torch.Tensor
    ) -> None:
        if total_input.dtype == torch.float32:
            main_grad.addmm_(grad_output.t(), total_input)
        else:
            _accumulate(main_grad, grad_output.t(), total_input, self.mode)

    def wgrad_gemm_accum_fp16(
        self, total_input: torch.Tensor, grad_output: torch.Tensor, main_grad: torch.Tensor
    ) -> None:
        main_grad.addmm_(grad_output.t().to(main_grad.dtype), total_input.to(main_grad.dtype))


@torch.library.custom_op("gemma3::wgrad_accum", mutates_args=())
def wgrad_accum(total_input: torch.Tensor, grad_output: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """weight.main_grad += grad_output^T @ total_input (2-D operands); returns the tensor autograd hands to the
    weight: a dummy (DDP's hook skips it: `grad_added_to_main_grad`) or, without main_grad, the real gradient.

    Declared functional on purpose: its effect is on megatron's grad buffer, which no graph reads; its output is
    the weight's gradient, so it is never dropped or recomputed."""
    main_grad = getattr(weight, "main_grad", None)
    shim = _SHIM.get("shim")
    if main_grad is None or shim is None or not hasattr(weight, "grad_added_to_main_grad"):
        _STATE["unfused_calls"] = int(_STATE["unfused_calls"]) + 1
        return grad_output.t().matmul(total_input).to(weight.dtype)
    try:
        if main_grad.dtype == torch.float32:
            shim.wgrad_gemm_accum_fp32(total_input, grad_output, main_grad)
        else:
            shim.wgrad_gemm_accum_fp16(total_input, grad_output, main_grad)
    except (RuntimeError, TypeError, NotImplementedError) as exc:  # (argument checks fail before any write)
        # a shape/layout the install probe did not cover: stop fusing, keep training on the unfused gradient
        log.warning("grad-accum fusion off from here on: %s", str(exc).splitlines()[0][:200] if str(exc) else exc)
        _SHIM["shim"] = None
        _STATE.update(reason=f"runtime error: {exc!r}"[:300])
        _STATE["unfused_calls"] = int(_STATE["unfused_calls"]) + 1
        return grad_output.t().matmul(total_input).to(weight.dtype)
    weight.grad_added_to_main_grad = True
    _STATE["fused_calls"] = int(_STATE["fused_calls"]) + 1
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


@wgrad_accum.register_fake
def _(total_input: torch.Tensor, grad_output: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


_SHIM: dict[str, TorchWgradAccum | None] = {"shim": None}


class _FusedWgradLinear(torch.autograd.Function):
    """y = x W^T; the backward's weight gradient goes through `gemma3::wgrad_accum` (see module doc)."""

    @staticmethod
    def forward(ctx, x, weight):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return torch.matmul(x, weight.t())

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad_input = grad_output.matmul(weight)
        x2 = x.reshape(-1, x.shape[-1])
        g2 = grad_output.reshape(-1, grad_output.shape[-1])
        return grad_input, torch.ops.gemma3.wgrad_accum(x2.contiguous(), g2.contiguous(), weight)


def _graph_safe_linear(original):
    """megatron's linear function, with its fused-accumulation calls kept out of torch.compile graphs (see module doc).
    Calls without fusion are traced as before (no graph break)."""

    @torch.compiler.disable(recursive=True)
    def fused(*args, **kwargs):
        return original(*args, **kwargs)

    @functools.wraps(original)
    def linear(
        input,
        weight,
        bias,
        gradient_accumulation_fusion,
        allreduce_dgrad=False,
        sequence_parallel=False,
        grad_output_buffer=None,
        wgrad_deferral_limit=0,
        *args,
        **kwargs,
    ):
        rest = (allreduce_dgrad, sequence_parallel, grad_output_buffer, wgrad_deferral_limit, *args)
        if gradient_accumulation_fusion:
            if (
                bias is None
                and not allreduce_dgrad
                and not sequence_parallel
                and grad_output_buffer is None
                and not args
                and not kwargs.get("async_grad_allreduce")
            ):
                return _FusedWgradLinear.apply(input, weight)
            return fused(input, weight, bias, gradient_accumulation_fusion, *rest, **kwargs)
        return original(input, weight, bias, gradient_accumulation_fusion, *rest, **kwargs)

    linear.__wrapped_original__ = original  # type: ignore[attr-defined]
    linear.warned = getattr(original, "warned", False)  # type: ignore[attr-defined]
    return linear


def install(device: torch.device, mode: str | None = None) -> bool:
    """Make megatron's `gradient_accumulation_fusion` usable with the torch shim; True when the flag may be set.

    CUDA only (the out_dtype GEMMs have no CPU kernels) unless `mode` is given explicitly (tests pass "reference").
    apex's real extension, when importable, is left in place. Never raises: a failed probe logs and returns False.
    """
    import megatron.core.tensor_parallel.layers as layers

    if getattr(layers, "_grad_accum_fusion_available", False) and not isinstance(
        getattr(layers, "fused_weight_gradient_mlp_cuda", None), TorchWgradAccum
    ):
        _STATE.update(installed=True, mode="apex", reason=None)
        _SHIM["shim"] = layers.fused_weight_gradient_mlp_cuda  # same two functions; used by gemma3::wgrad_accum
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
            log.warning(
                "grad-accum fusion off: neither addmm(out_dtype=fp32, out=acc) nor mm(out_dtype=fp32) "
                "works here; keeping the bf16 grad + DDP add path"
            )
            return False
    _SHIM["shim"] = TorchWgradAccum(mode)
    MEGATRON_PATCHES.replace(layers, "fused_weight_gradient_mlp_cuda", _SHIM["shim"])
    MEGATRON_PATCHES.replace(layers, "_grad_accum_fusion_available", True)
    _wrap_linear(layers)
    _STATE.update(installed=True, mode=mode, reason=None)
    log.info("grad-accum fusion: megatron wgrad GEMMs accumulate into fp32 main_grad (%s)", mode)
    return True


def _wrap_linear(layers) -> None:
    fn = layers.linear_with_grad_accumulation_and_async_allreduce
    if getattr(fn, "__wrapped_original__", None) is None:
        MEGATRON_PATCHES.replace(layers, "linear_with_grad_accumulation_and_async_allreduce", _graph_safe_linear(fn))


def status() -> dict:
    """What install() decided last: installed, mode ("addmm_out" / "mm_add" / "reference" / "apex"), reason; and
    how many in-graph weight gradients were accumulated fused / fell back to the unfused gradient."""
    return dict(_STATE)


def reset_counters() -> None:
    _STATE.update(fused_calls=0, unfused_calls=0)

"""LoRA's `base_out + h @ (s B)^T` as one hand-written Triton kernel: one read of base_out, one write of the result.

WHY: as `torch.addmm(base_out, h, (sB)^T)`, cuBLAS adds base_out in its epilogue, but aten's addmm first copies base_out
into the fresh output buffer (a device-to-device memcpy of [tokens, out_features] per adapted linear, a measurable share
of a LoRA step: docs/PERFORMANCE.md). With r = 32 the product is memory-bound anyway, so one kernel that loads a tile of
base_out, adds h_tile @ w_tile^T (fp32 accumulation, like cuBLAS) and stores it moves half the bytes.

`gemma3::lora_up_add` is a custom op (opaque to inductor inside the compiled layers) whose backward is two plain
GEMMs: d base = grad, d h = grad @ w, d w = grad^T @ h. With TRITON_INTERPRET=1 the kernel runs on CPU tensors (the
unit test's way to check it without a GPU).
"""

from __future__ import annotations

import logging

import torch

from .triton_support import available, tl, triton  # noqa: F401  (available: the callers' check)

log = logging.getLogger("gemma3_runtime.perf")

_BM, _BN, _WARPS = 128, 128, 8


if triton is not None:

    @triton.jit
    def _lora_up_add_kernel(
        base_ptr,
        h_ptr,
        w_ptr,
        out_ptr,
        M,
        N,
        R: tl.constexpr,
        R_PAD: tl.constexpr,
        BM: tl.constexpr,
        BN: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        rn = tl.program_id(1) * BN + tl.arange(0, BN)
        rk = tl.arange(0, R_PAD)
        in_m, in_n, in_k = rm < M, rn < N, rk < R
        rows = rm.to(tl.int64)[:, None]
        h = tl.load(h_ptr + rows * R + rk[None, :], mask=in_m[:, None] & in_k[None, :], other=0.0)
        w = tl.load(w_ptr + rn.to(tl.int64)[:, None] * R + rk[None, :], mask=in_n[:, None] & in_k[None, :], other=0.0)
        # fp32 operands: exact for bf16 inputs even as tf32 (8 < 10 mantissa bits); "ieee" for fp32 inputs
        acc = tl.dot(h.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision=PRECISION)
        tile = rows * N + rn[None, :]
        mask = in_m[:, None] & in_n[None, :]
        acc += tl.load(base_ptr + tile, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + tile, acc.to(out_ptr.dtype.element_ty), mask=mask)


def lora_up_add_triton(base: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """base [M, N] + h [M, R] @ w [N, R]^T (all contiguous, one dtype) -> a new [M, N] tensor."""
    m, n = base.shape
    r = h.shape[1]
    out = torch.empty_like(base)
    if m and n:
        r_pad = max(16, triton.next_power_of_2(r))
        grid = (triton.cdiv(m, _BM), triton.cdiv(n, _BN))
        precision = "ieee" if base.dtype == torch.float32 else "tf32"
        _lora_up_add_kernel[grid](
            base, h, w, out, m, n, R=r, R_PAD=r_pad, BM=_BM, BN=_BN, PRECISION=precision, num_warps=_WARPS
        )
    return out


@torch.library.custom_op("gemma3::lora_up_add", mutates_args=())
def lora_up_add(base: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """base + h @ w^T for 2-D base [M, N], h [M, R], w [N, R]: the Triton kernel where it runs, else addmm."""
    base, h, w = base.contiguous(), h.contiguous(), w.contiguous()
    if available(base) and base.dtype == h.dtype == w.dtype:
        return lora_up_add_triton(base, h, w)
    return torch.addmm(base, h, w.t())


@lora_up_add.register_fake
def _(base: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(base, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    _, h, w = inputs
    ctx.save_for_backward(h, w)


def _backward(ctx, grad):
    h, w = ctx.saved_tensors
    return grad, grad @ w, grad.t() @ h


lora_up_add.register_autograd(_backward, setup_context=_setup_context)


def use_lora_triton_add(models: list) -> int:
    """Point every LoRA adapter's fused add at `gemma3::lora_up_add` (when triton imports); returns how many."""
    from gemma3_runtime.peft.adapter import LowRankAdapter

    if triton is None:
        return 0
    n = 0
    for model in models:
        for module in model.modules():
            if isinstance(module, LowRankAdapter):
                module.triton_add = True
                n += 1
    if n:
        log.info("LoRA adds through the Triton op on %d adapters", n)
    return n

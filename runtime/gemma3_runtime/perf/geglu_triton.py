"""The GeGLU backward as one hand-written Triton kernel: one read of gate, up and grad, one write of [dgate | dup].

WHY: inductor turns every torch formulation of this backward (`cat([dgate, dup])`, a `where` over both halves) into two
kernels that each re-read gate, up and grad (docs/PERFORMANCE.md). The bytes that must move are 2I reads + I reads + 2I
writes per row (~1.1 GB per layer at 16k tokens x 6,912). Each program handles BLOCK columns of one row and writes both
halves. tanh is computed as 2*sigmoid(2z) - 1 in fp32 (Triton's core language has no tanh across versions).

Triton ships with CUDA builds of torch; `available()` says whether this process can use it. With TRITON_INTERPRET=1
the same kernel runs on CPU tensors (the unit test's way to check the formula without a GPU).
"""

from __future__ import annotations

import math

import torch

from .triton_support import available, tl, triton  # noqa: F401  (available: the callers' check)

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_BLOCK = 1024


if triton is not None:

    @triton.jit
    def _geglu_backward_kernel(
        x_ptr, grad_ptr, out_ptr, width, c0: tl.constexpr, c1: tl.constexpr, BLOCK: tl.constexpr
    ):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < width
        x_row = x_ptr + row * 2 * width
        out_row = out_ptr + row * 2 * width
        g = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(x_row + width + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(grad_ptr + row * width + cols, mask=mask, other=0.0).to(tl.float32)
        inner = c0 * (g + c1 * g * g * g)
        t = 2.0 * tl.sigmoid(2.0 * inner) - 1.0
        gelu = 0.5 * g * (1.0 + t)
        dgelu = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * c0 * (1.0 + 3.0 * c1 * g * g)
        tl.store(out_row + cols, (dy * u * dgelu).to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(out_row + width + cols, (dy * gelu).to(out_ptr.dtype.element_ty), mask=mask)


def geglu_backward(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """d/dx of sum(grad * gelu_tanh(gate) * up) for x = [gate | up] (last dim 2I, contiguous) -> [..., 2I]."""
    width = x.shape[-1] // 2
    x, grad = x.contiguous(), grad.contiguous()
    out = torch.empty_like(x)
    rows = x.numel() // (2 * width)
    if rows:
        grid = (rows, triton.cdiv(width, _BLOCK))
        _geglu_backward_kernel[grid](x, grad, out, width, c0=_SQRT_2_OVER_PI, c1=0.044715, BLOCK=_BLOCK)
    return out

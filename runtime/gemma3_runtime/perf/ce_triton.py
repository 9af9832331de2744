"""Cross-entropy loss and d(loss)/d(logits) for one chunk of logits as one hand-written Triton kernel, in place.

WHY: the chunked linear + CE (perf/linear_ce.py) spends its non-GEMM time in one pass per chunk that turns bf16
logits [2048, 262144] into the per-token loss and softmax - onehot. Inductor's fused kernel for it reads the logits
three times (max, sum of exp, gradient) and writes a new 1 GiB gradient. Here each program owns one row: pass 1
keeps an online max / sum of exp (one read), pass 2 reads the row again and writes the gradient over the logits (no
new buffer): 2 reads + 1 write instead of 3 + 1 (docs/PERFORMANCE.md has the timings).
The math is in fp32, as the torch formula (`linear_ce._ce_loss_and_grad`); rows whose label is negative (ignored)
get loss 0 and gradient 0. The vocabulary size is a compile-time constant (one model, one size; and the
interpreter cannot loop over a runtime bound).

With TRITON_INTERPRET=1 the kernel runs on CPU tensors (the unit test's way to check it without a GPU).
"""

from __future__ import annotations

import torch

from .triton_support import available, tl, triton  # noqa: F401  (available: the callers' check)

#: columns per loop iteration and warps per program of the kernel's launch
BLOCK, WARPS = 4096, 8


if triton is not None:

    @triton.jit
    def _ce_loss_grad_kernel(logits_ptr, labels_ptr, loss_ptr, row_stride, vocab: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * row_stride
        label = tl.load(labels_ptr + row)
        valid = label >= 0
        offs = tl.arange(0, BLOCK)
        # pass 1: running max and sum of exp (rescaled once per block, one exp per element)
        m = tl.max(tl.full([BLOCK], -1e30, tl.float32), axis=0)
        s = tl.sum(tl.zeros([BLOCK], tl.float32), axis=0)
        for start in range(0, vocab, BLOCK):
            cols = start + offs
            x = tl.load(base + cols, mask=cols < vocab, other=-float("inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
        lse = m + tl.log(s)
        safe = tl.where(valid, label, 0)
        target = tl.load(base + safe).to(tl.float32)
        tl.store(loss_ptr + row, tl.where(valid, lse - target, 0.0))
        # pass 2: softmax - onehot, written over the logits (zero for an ignored row)
        keep = tl.where(valid, 1.0, 0.0)
        for start in range(0, vocab, BLOCK):
            cols = start + offs
            mask = cols < vocab
            x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
            g = (tl.exp(x - lse) - tl.where(cols == safe, 1.0, 0.0)) * keep
            tl.store(base + cols, g.to(logits_ptr.dtype.element_ty), mask=mask)


def ce_loss_and_grad_(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-row fp32 loss, d loss / d logits) for logits [N, V] (row-contiguous) and labels [N]; the gradient
    OVERWRITES `logits` and is returned as the same tensor."""
    if logits.stride(-1) != 1:
        raise ValueError("ce_loss_and_grad_: logits must be contiguous in the vocabulary dimension")
    n, vocab = logits.shape
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n:
        _ce_loss_grad_kernel[(n,)](
            logits, labels.contiguous(), loss, logits.stride(0), vocab, BLOCK=BLOCK, num_warps=WARPS
        )
    return loss, logits

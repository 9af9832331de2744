"""Cross-entropy loss and d(loss)/d(logits) for one chunk of logits as one hand-written Triton kernel, in place.

WHY: the chunked linear + CE (perf/linear_ce.py) spends its non-GEMM time in one pass per chunk that turns bf16
logits [2048, 262144] into the per-token loss and softmax - onehot. Inductor's fused kernel for it reads the logits
three times (max, sum of exp, gradient) and writes a new 1 GiB gradient: 1.28 ms per 2,048-token chunk on an H200,
41 ms per 65k-token step. Here each program owns one row: pass 1 keeps an online max / sum of exp (one read), pass 2
reads the row again and writes the gradient over the logits (no new buffer): 2 reads + 1 write instead of 3 + 1,
0.89 ms per 2,048-token chunk on the same card.
The math is in fp32, as the torch formula (`linear_ce._ce_loss_and_grad`); rows whose label is negative (ignored)
get loss 0 and gradient 0. The vocabulary size is a compile-time constant (one model, one size; and the
interpreter cannot loop over a runtime bound).

With TRITON_INTERPRET=1 the kernel runs on CPU tensors (the unit test's way to check it without a GPU).
"""

from __future__ import annotations

import os

import torch

from .triton_support import available, tl, triton  # noqa: F401  (available: the callers' check)


def _launch_shape() -> tuple[int, int, int]:
    """(columns per iteration, warps, programs): 4096 x 8, one program per row, unless GEMMA3_CE_BLOCK /
    GEMMA3_CE_WARPS / GEMMA3_CE_PROGRAMS say otherwise (bench). With GEMMA3_CE_PROGRAMS=P, P programs loop over the
    rows: few enough rows in flight that a row read in pass 1 can still be in L2 when pass 2 reads it again."""
    return (int(os.environ.get("GEMMA3_CE_BLOCK", "4096")), int(os.environ.get("GEMMA3_CE_WARPS", "8")),
            int(os.environ.get("GEMMA3_CE_PROGRAMS", "0")))


if triton is not None:

    @triton.jit
    def _ce_loss_grad_kernel(logits_ptr, labels_ptr, loss_ptr, row_stride, n_rows, vocab: tl.constexpr,
                             BLOCK: tl.constexpr, ROWS_PER_PROGRAM: tl.constexpr, KEEP: tl.constexpr,
                             STREAM: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        for i in range(0, ROWS_PER_PROGRAM):
            row = tl.program_id(0).to(tl.int64) + i * tl.num_programs(0)
            active = row < n_rows  # the last round of a looping grid may have no row left for this program
            base = logits_ptr + row * row_stride
            label = tl.load(labels_ptr + row, mask=active, other=-1)
            valid = label >= 0
            # pass 1: running max and sum of exp (rescaled once per block, one exp per element); the row is kept
            # in L2 for pass 2 where it fits
            m = tl.max(tl.full([BLOCK], -1e30, tl.float32), axis=0)
            s = tl.sum(tl.zeros([BLOCK], tl.float32), axis=0)
            for start in range(0, vocab, BLOCK):
                cols = start + offs
                x = tl.load(base + cols, mask=(cols < vocab) & active, other=-float("inf"),
                            eviction_policy=KEEP).to(tl.float32)
                m_new = tl.maximum(m, tl.max(x, axis=0))
                s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
                m = m_new
            lse = m + tl.log(s)
            safe = tl.where(valid, label, 0)
            target = tl.load(base + safe, mask=active, other=0.0).to(tl.float32)
            tl.store(loss_ptr + row, tl.where(valid, lse - target, 0.0), mask=active)
            # pass 2: softmax - onehot, written over the logits (zero for an ignored row)
            keep = tl.where(valid, 1.0, 0.0)
            for start in range(0, vocab, BLOCK):
                cols = start + offs
                mask = (cols < vocab) & active
                x = tl.load(base + cols, mask=mask, other=0.0, eviction_policy=STREAM).to(tl.float32)
                g = (tl.exp(x - lse) - tl.where(cols == safe, 1.0, 0.0)) * keep
                tl.store(base + cols, g.to(logits_ptr.dtype.element_ty), mask=mask, eviction_policy=STREAM)


def ce_loss_and_grad_(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-row fp32 loss, d loss / d logits) for logits [N, V] (row-contiguous) and labels [N]; the gradient
    OVERWRITES `logits` and is returned as the same tensor."""
    if logits.stride(-1) != 1:
        raise ValueError("ce_loss_and_grad_: logits must be contiguous in the vocabulary dimension")
    n, vocab = logits.shape
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n:
        block, warps, programs = _launch_shape()
        grid = min(n, programs) if programs > 0 else n
        # L2 hints only for a looping grid (a row read in pass 1 stays for pass 2; pass 2's traffic streams through)
        keep, stream = ("evict_last", "evict_first") if programs > 0 else ("", "")
        _ce_loss_grad_kernel[(grid,)](logits, labels.contiguous(), loss, logits.stride(0), n, vocab, BLOCK=block,
                                      ROWS_PER_PROGRAM=-(-n // grid), KEEP=keep, STREAM=stream, num_warps=warps)
    return loss, logits

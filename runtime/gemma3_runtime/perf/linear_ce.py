"""Chunked linear + cross-entropy over Gemma 3's 262,144-token vocabulary, without full fp32 logits.

WHY: the plain path (output layer -> [s, b, V] bf16 logits -> megatron's vocab-parallel CE, which upcasts to fp32)
materialises ~4 GiB of bf16 and ~8.6 GiB of fp32 logits for 8192 tokens and streams them through memory about ten
times in forward + backward. At 1B scale that traffic costs as much time as a third of the model's GEMMs and is the
largest single term in peak memory. Here the tokens are processed in chunks: per chunk one GEMM gives bf16 logits,
ONE pass over them (perf/ce_triton.py's hand-written Triton kernel where Triton runs, else the torch formula
compiled) gives the per-token loss and d(loss_i)/d(logits) in bf16, and two GEMMs turn that into the hidden-state and
weight gradients right away. Nothing of size [N, V] outlives its chunk, and the LM head costs the same three GEMMs
as the plain path (no recompute).

The gradients are computed in the forward for an upstream gradient of 1 per token; the backward rescales them.
That is exact for the hidden-state gradient whatever the upstream gradient is (a per-row scale), and exact for the
weight gradient whenever the upstream gradient is one value on all non-ignored tokens (a mean or sum loss, the
normal case: rows with a negative (ignored) label have zero gradient anyway). Any other upstream gradient (per-token
weights) takes an exact slow path that recomputes the logits chunk by chunk. Pass `loss_mask` to turn masked tokens
into ignored ones so masked SFT losses stay on the fast path.

Limits: tensor-parallel size 1 only (the caller falls back to the plain vocab-parallel path otherwise).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator

import torch

IGNORE_INDEX = -100
_UNIFORM_UPSTREAM = contextvars.ContextVar("gemma3_uniform_upstream_grad", default=False)


@contextlib.contextmanager
def uniform_upstream_grad() -> Iterator[None]:
    """Promise, for the losses computed inside, that the backward's upstream gradient is one value on every
    non-ignored token (a sum or mean of the per-token losses, as training/step.py's loss function is).

    WHY: without the promise the backward checks it (`(g == g[0]).all()` on the device, read by the host): one host
    sync per micro-batch, which drains the queue of kernels the host had launched ahead and leaves the GPU waiting
    while the host launches the rest of the backward. With it, the scale is taken as the mean upstream gradient
    over the valid tokens, on the device.
    """
    token = _UNIFORM_UPSTREAM.set(True)
    try:
        yield
    finally:
        _UNIFORM_UPSTREAM.reset(token)


#: bf16 logits per chunk: 4096 tokens x 262,144 vocab. Each chunk after the first adds its weight gradient into the
#: fp32 [V, D] accumulator (1.2 GB read + written inside the GEMM), so fewer, larger chunks pay, for a little more
#: peak memory (docs/PERFORMANCE.md).
DEFAULT_CHUNK_BYTES = 2 << 30


def _ce_loss_and_grad(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss (fp32) and d loss / d logits = softmax - onehot (in the logits' dtype); rows with a negative
    label (ignored) give 0.

    Written as plain tensor ops so that torch.compile fuses it into one reduction and one pointwise kernel; on CPU
    (tests) it runs eagerly.
    """
    x = logits.float()
    valid = labels >= 0
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    m = x.amax(dim=-1, keepdim=True)
    e = torch.exp(x - m)
    s = e.sum(dim=-1, keepdim=True)
    lse = (m + torch.log(s)).squeeze(-1)
    tgt = x.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    loss = torch.where(valid, lse - tgt, torch.zeros_like(lse))
    cols = torch.arange(x.shape[-1], device=x.device)
    onehot = (cols.unsqueeze(0) == safe.unsqueeze(-1)).to(x.dtype)
    grad = (e / s - onehot) * valid.unsqueeze(-1).to(x.dtype)
    return loss, grad.to(logits.dtype)


@functools.cache
def _compiled_ce() -> Callable:
    return torch.compile(_ce_loss_and_grad, dynamic=False, fullgraph=True)


def _ce_kernel(device: torch.device, use_compile: bool | None) -> Callable:
    """The per-chunk loss + gradient pass: the hand-written Triton kernel (perf/ce_triton.py) on CUDA where triton
    imports, else the torch formula compiled (CUDA) or eager (CPU, or use_compile=False)."""
    if use_compile is None:
        use_compile = device.type == "cuda"
    if not use_compile:
        return _ce_loss_and_grad
    if device.type == "cuda":
        from . import ce_triton

        if ce_triton.triton is not None:
            return ce_triton.ce_loss_and_grad_
    return _compiled_ce()


@functools.cache
def _aliased_fp32_addmm_ok(device_index: int) -> bool:
    """Whether `addmm(acc, a, b, out_dtype=fp32, out=acc)` on bf16 a, b accumulates correctly on this GPU.

    WHY: accumulating the [V, D] weight gradient in the GEMM's epilogue saves a read + write of 1.2 GB fp32 per
    chunk. The out_dtype overloads are CUDA-only and young, so they are checked once on small random inputs.
    """
    dev = torch.device("cuda", device_index)
    try:
        g = torch.Generator(device=dev).manual_seed(0)
        a = torch.randn(64, 48, device=dev, generator=g).to(torch.bfloat16)
        b = torch.randn(48, 32, device=dev, generator=g).to(torch.bfloat16)
        acc = torch.randn(64, 32, device=dev, generator=g)
        ref = acc + a.float() @ b.float()
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        return bool(torch.allclose(acc, ref, rtol=1e-3, atol=1e-3))
    except (RuntimeError, TypeError):
        return False


def _accumulate_mm(acc: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """acc (fp32) += a @ b, with fp32 accumulation even for bf16 operands; allocates acc when None."""
    if a.dtype == torch.float32:
        return torch.mm(a, b) if acc is None else acc.addmm_(a, b)
    if a.is_cuda:
        if acc is None:
            try:
                return torch.mm(a, b, out_dtype=torch.float32)
            except (RuntimeError, TypeError):
                return torch.mm(a, b).float()
        if _aliased_fp32_addmm_ok(a.device.index or 0):
            return torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        return acc.add_(torch.mm(a, b))
    # CPU, low precision: exact-enough reference path for tests
    prod = a.float() @ b.float()
    return prod if acc is None else acc.add_(prod)


def _chunks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk, use_compile):  # type: ignore[override]
        n = hidden.shape[0]
        w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
        kernel = _ce_kernel(hidden.device, use_compile)
        need_h = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[1]
        loss = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w: torch.Tensor | None = None
        for lo, hi in _chunks(n, chunk):
            h = hidden[lo:hi]
            logits = h @ w.t()
            loss_c, dlogits = kernel(logits, labels[lo:hi])
            del logits
            loss[lo:hi] = loss_c
            if need_h:
                torch.mm(dlogits, w, out=grad_h[lo:hi])
            if need_w:
                grad_w = _accumulate_mm(grad_w, dlogits.t(), h)
            del dlogits
        ctx.save_for_backward(hidden, weight, labels, grad_h, grad_w)
        ctx.chunk, ctx.use_compile = chunk, use_compile
        ctx.uniform = _UNIFORM_UPSTREAM.get()
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        hidden, weight, labels, grad_h, grad_w = ctx.saved_tensors
        g = grad_loss.float()
        out_h = out_w = None
        if grad_h is not None:
            out_h = (grad_h.float() * g.unsqueeze(-1)).to(hidden.dtype)
        if grad_w is not None and ctx.uniform:  # no host sync: the scale is the mean over the valid tokens
            valid = (labels >= 0).to(g.dtype)
            scale = (g * valid).sum() / valid.sum().clamp(min=1.0)
            out_w = (grad_w * scale).to(weight.dtype)
        elif grad_w is not None:
            valid = labels >= 0
            gv = g[valid]
            if gv.numel() == 0:
                out_w = torch.zeros_like(weight)
            elif bool((gv == gv[0]).all()):  # one host sync per step: decides fast vs exact-slow path
                out_w = (grad_w * gv[0]).to(weight.dtype)
            else:
                out_w = _weighted_weight_grad(hidden, weight, labels, g, ctx.chunk, ctx.use_compile)
        return out_h, out_w, None, None, None


def _weighted_weight_grad(hidden, weight, labels, g, chunk, use_compile) -> torch.Tensor:
    """Exact weight gradient for an arbitrary per-token upstream gradient: recomputes logits chunk by chunk."""
    w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
    kernel = _ce_kernel(hidden.device, use_compile)
    acc: torch.Tensor | None = None
    for lo, hi in _chunks(hidden.shape[0], chunk):
        h = hidden[lo:hi]
        _, dlogits = kernel(h @ w.t(), labels[lo:hi])
        dlogits = (dlogits.float() * g[lo:hi].unsqueeze(-1)).to(h.dtype)
        acc = _accumulate_mm(acc, dlogits.t(), h)
    return acc.to(weight.dtype)


def default_chunk_tokens(vocab_size: int, itemsize: int = 2, chunk_bytes: int | None = None) -> int:
    """Tokens per chunk: `chunk_bytes` (default 2 GiB; perf.ce_chunk_mib) of logits."""
    return max(1, (chunk_bytes or DEFAULT_CHUNK_BYTES) // (vocab_size * itemsize))


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    vocab_size: int | None = None,
    loss_mask: torch.Tensor | None = None,
    chunk_tokens: int | None = None,
    chunk_bytes: int | None = None,
    use_compile: bool | None = None,
) -> torch.Tensor:
    """Per-token cross-entropy of softmax(hidden @ weight[:vocab_size].T) against labels, in fp32.

    hidden [..., D], labels [...] (same leading shape), weight [V_pad, D] (rows past `vocab_size` - vocabulary
    padding - never enter the softmax and get zero gradient). Returns loss with labels' shape; tokens whose label is
    negative (e.g. -100) or whose `loss_mask` is 0 get loss 0 and no gradient. `use_compile` None = compile on CUDA
    only (where compiling, the per-chunk pass is the Triton kernel when triton imports).
    Chunks hold `chunk_tokens` tokens, else as many as fit `chunk_bytes` of logits (default 2 GiB).
    """
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree on leading dims")
    v = weight.shape[0] if vocab_size is None else vocab_size
    w = weight[:v] if v != weight.shape[0] else weight
    lab = labels.reshape(-1).long()
    if loss_mask is not None:
        lab = lab.masked_fill(loss_mask.reshape(-1) == 0, IGNORE_INDEX)
    h2 = hidden.reshape(-1, hidden.shape[-1])
    if not h2.is_contiguous():
        h2 = h2.contiguous()
    chunk = chunk_tokens or default_chunk_tokens(v, hidden.element_size(), chunk_bytes)
    loss = _LinearCrossEntropy.apply(h2, w, lab, int(chunk), use_compile)
    return loss.view(labels.shape)


def reference_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """The plain path (full logits, fp32 CE) that the chunked one must equal; used by tests and the benchmark."""
    v = weight.shape[0] if vocab_size is None else vocab_size
    logits = (hidden @ weight[:v].t()).float()
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, v),
        labels.reshape(-1).long().masked_fill(labels.reshape(-1) < 0, IGNORE_INDEX),
        reduction="none",
        ignore_index=IGNORE_INDEX,
    )
    return loss.view(labels.shape)

"""The chunked linear + cross-entropy (gemma3_runtime.perf.linear_ce) equals the plain full-logits path: per-token
losses and the gradients of hidden states and weight, for uniform (mean) and per-token upstream gradients, ignored
labels, loss masks and a padded vocabulary. CPU, fp32 and bf16."""

from __future__ import annotations

import pytest
import torch

from gemma3_runtime.perf.linear_ce import (
    IGNORE_INDEX,
    default_chunk_tokens,
    linear_cross_entropy,
    reference_linear_cross_entropy,
    uniform_upstream_grad,
)

pytestmark = pytest.mark.unit


def _inputs(seed: int, n: tuple[int, ...], d: int, v_pad: int, v: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(*n, d, generator=g) * 2).to(dtype).requires_grad_(True)
    weight = torch.randn(v_pad, d, generator=g) * 0.5
    weight[v:] = 0.0
    weight = weight.to(dtype).requires_grad_(True)
    labels = torch.randint(0, v, n, generator=g)
    return hidden, weight, labels


def _grads(loss_fn, hidden, weight, upstream):
    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    loss = loss_fn(h, w)
    loss.backward(upstream)
    return loss.detach(), h.grad, w.grad


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("chunk", [1, 5, 7, 64])
@pytest.mark.parametrize("upstream_kind", ["mean", "per_token"])
def test_matches_full_logits_fp32(chunk: int, upstream_kind: str) -> None:
    hidden, weight, labels = _inputs(chunk, (3, 7), 16, 40, 37, torch.float32)
    labels[0, 2] = IGNORE_INDEX
    labels[1, 1] = -1
    labels[2, 6] = IGNORE_INDEX
    g = torch.Generator().manual_seed(100 + chunk)
    if upstream_kind == "mean":
        upstream = torch.full(labels.shape, 1.0 / labels.numel())
    else:
        upstream = torch.rand(labels.shape, generator=g)
    fast = _grads(
        lambda h, w: linear_cross_entropy(h, w, labels, vocab_size=37, chunk_tokens=chunk), hidden, weight, upstream
    )
    ref = _grads(lambda h, w: reference_linear_cross_entropy(h, w, labels, vocab_size=37), hidden, weight, upstream)
    for a, b in zip(fast, ref, strict=False):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert _rel(a, b) < 1e-5
    assert fast[0][0, 2] == 0 and fast[0][2, 6] == 0
    assert torch.all(fast[2][37:] == 0)  # vocabulary padding rows get no gradient


@pytest.mark.parametrize("scale", [1.0, 0.125, 0.0])
def test_promised_uniform_upstream_needs_no_check(scale: float) -> None:
    """Under `uniform_upstream_grad()` (training/step.py's forward: a sum of per-token losses) the weight gradient
    takes the upstream value on the valid tokens from the device - same gradients as the plain path, whatever the
    value on ignored tokens (they have no gradient)."""
    hidden, weight, labels = _inputs(11, (3, 5), 16, 40, 37, torch.float32)
    labels[0, 1] = IGNORE_INDEX
    upstream = torch.full(labels.shape, scale)
    upstream[0, 1] = 7.0  # an ignored token: its upstream value must not leak into the scale

    def fast_fn(h, w):
        with uniform_upstream_grad():
            return linear_cross_entropy(h, w, labels, vocab_size=37, chunk_tokens=4)

    fast = _grads(fast_fn, hidden, weight, upstream)
    ref = _grads(lambda h, w: reference_linear_cross_entropy(h, w, labels, vocab_size=37), hidden, weight, upstream)
    for a, b in zip(fast, ref, strict=False):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_loss_mask_equals_ignore_index() -> None:
    hidden, weight, labels = _inputs(3, (2, 9), 8, 24, 24, torch.float32)
    mask = torch.ones(labels.shape, dtype=torch.long)
    mask[1, :4] = 0
    masked_labels = labels.masked_fill(mask == 0, IGNORE_INDEX)
    upstream = torch.full(labels.shape, 0.25)
    fast = _grads(
        lambda h, w: linear_cross_entropy(h, w, labels, loss_mask=mask, chunk_tokens=4), hidden, weight, upstream
    )
    ref = _grads(lambda h, w: reference_linear_cross_entropy(h, w, masked_labels), hidden, weight, upstream)
    for a, b in zip(fast, ref, strict=False):
        assert _rel(a, b) < 1e-5


def test_bf16_close_to_fp32_reference() -> None:
    hidden, weight, labels = _inputs(7, (4, 16), 32, 256, 250, torch.bfloat16)
    upstream = torch.full(labels.shape, 1.0 / labels.numel())
    fast = _grads(
        lambda h, w: linear_cross_entropy(h, w, labels, vocab_size=250, chunk_tokens=24), hidden, weight, upstream
    )
    ref = _grads(
        lambda h, w: reference_linear_cross_entropy(h.float(), w.float(), labels, vocab_size=250),
        hidden,
        weight,
        upstream,
    )
    assert fast[1].dtype == torch.bfloat16 and fast[2].dtype == torch.bfloat16
    assert _rel(fast[0], ref[0]) < 1e-2
    assert _rel(fast[1], ref[1].to(torch.bfloat16)) < 2e-2
    assert _rel(fast[2], ref[2].to(torch.bfloat16)) < 2e-2


def test_frozen_weight_and_all_ignored() -> None:
    hidden, weight, labels = _inputs(9, (5,), 8, 16, 16, torch.float32)
    w = weight.detach()
    h = hidden.detach().clone().requires_grad_(True)
    loss = linear_cross_entropy(h, w, labels, chunk_tokens=2)
    loss.sum().backward()
    ref_h = hidden.detach().clone().requires_grad_(True)
    reference_linear_cross_entropy(ref_h, w, labels).sum().backward()
    assert _rel(h.grad, ref_h.grad) < 1e-5
    all_ignored = torch.full_like(labels, IGNORE_INDEX)
    w2 = weight.detach().clone().requires_grad_(True)
    out = linear_cross_entropy(hidden.detach(), w2, all_ignored, chunk_tokens=2)
    out.sum().backward()
    assert torch.all(out == 0) and torch.all(w2.grad == 0)


def test_default_chunk_is_two_gib_of_bf16_logits() -> None:
    assert default_chunk_tokens(262144) == 4096
    assert default_chunk_tokens(262144, chunk_bytes=8 << 30) == 16384  # perf.ce_chunk_mib=8192


_TRITON_CHECK = """
import torch
from gemma3_runtime.perf import ce_triton
from gemma3_runtime.perf.linear_ce import _ce_loss_and_grad
device = "cuda" if torch.cuda.is_available() else "cpu"
assert ce_triton.available(torch.empty(0, device=device))
g = torch.Generator().manual_seed(0)
for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
    logits = (torch.randn(7, 2500, generator=g) * 4).to(device, dtype)   # vocab not a multiple of the block
    labels = torch.randint(0, 2500, (7,), generator=g).to(device)
    labels[2] = -100                                                     # an ignored row: loss 0, gradient 0
    labels[3] = 2499                                                     # the last column
    want_loss, want_grad = _ce_loss_and_grad(logits, labels)
    work = logits.clone()
    loss, grad = ce_triton.ce_loss_and_grad_(work, labels)
    assert grad.data_ptr() == work.data_ptr()                            # written in place
    assert float((loss.double() - want_loss.double()).abs().max()) < 1e-4, (dtype, loss, want_loss)
    rel = float((grad.double() - want_grad.double()).norm() / want_grad.double().norm())
    assert rel < tol, (dtype, rel)
    assert float(loss[2]) == 0.0 and float(grad[2].abs().max()) == 0.0
print("ok")
"""


def test_triton_ce_kernel_matches_the_formula() -> None:
    """The hand-written Triton loss + gradient pass (perf/ce_triton.py) equals the torch formula: fp32 and bf16, a
    ragged last block, an ignored row, the last column as label, the gradient written over the logits. On a GPU
    directly, on CPU through the Triton interpreter in a subprocess (it must be on before triton imports)."""
    from triton_helpers import run_triton_check

    run_triton_check(_TRITON_CHECK, GEMMA3_CE_BLOCK="1024")

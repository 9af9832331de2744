"""LoRA's fused up-projection add (perf/lora_triton.py, `gemma3::lora_up_add`) computes `base + h @ w^T`: the Triton
kernel against addmm, and the op's gradients against autograd of the addmm form."""

from __future__ import annotations

import pytest
import torch

from gemma3_runtime.perf import lora_triton  # noqa: F401  (registers gemma3::lora_up_add)

pytestmark = pytest.mark.unit


def test_op_gradients_equal_addmm() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(37, 50, generator=g, dtype=torch.float64, requires_grad=True)
    h = torch.randn(37, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 8, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(37, 50, generator=g, dtype=torch.float64)
    out = torch.ops.gemma3.lora_up_add(base, h, w)
    got = torch.autograd.grad((out * up).sum(), (base, h, w))
    ref_out = torch.addmm(base, h, w.t())
    want = torch.autograd.grad((ref_out * up).sum(), (base, h, w))
    assert torch.allclose(out, ref_out)
    for a, b in zip(got, want, strict=False):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


_TRITON_CHECK = """
import torch
from gemma3_runtime.perf import lora_triton
device = "cuda" if torch.cuda.is_available() else "cpu"
assert lora_triton.available(torch.empty(0, device=device))
g = torch.Generator().manual_seed(0)
for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
    for m, n, r in ((37, 50, 8), (130, 260, 32)):                      # ragged tiles, rank below / at a dot's 16+
        base = torch.randn(m, n, generator=g).to(device, dtype)
        h = torch.randn(m, r, generator=g).to(device, dtype)
        w = torch.randn(n, r, generator=g).to(device, dtype)
        got = lora_triton.lora_up_add_triton(base, h, w).double()
        want = (base.double() + h.double() @ w.double().t())
        rel = float((got - want).norm() / want.norm())
        assert rel < tol, (dtype, m, n, r, rel)
print("ok")
"""


def test_triton_kernel_matches_addmm() -> None:
    """On a GPU directly, on CPU through the Triton interpreter in a subprocess (it must be on before triton
    imports): fp32 and bf16, tiles cut by the matrix edges, rank 8 (padded to the dot's minimum) and 32."""
    from triton_helpers import run_triton_check

    run_triton_check(_TRITON_CHECK)


def test_op_compiles_without_graph_break() -> None:
    """Inside the compiled decoder layers the op must stay one opaque node (fullgraph would raise otherwise)."""

    def f(base, h, w):
        return torch.ops.gemma3.lora_up_add(base * 2.0, h, w).sum()

    g = torch.Generator().manual_seed(1)
    args = [torch.randn(*s, generator=g, requires_grad=True) for s in ((9, 12), (9, 4), (12, 4))]
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(*args), args)
    want = torch.autograd.grad(f(*args), args)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want, strict=False))

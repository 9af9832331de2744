"""The fused GeGLU op (perf/geglu.py) is the same function as megatron's glu: forward and gradient against autograd
of the reference, and the swapped MLP gives the plain model's loss and gradients, eagerly and with the layers
compiled (aot_eager: the op stays one node, no graph break), while eval keeps megatron's code."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model_helpers import tiny_config  # noqa: E402

pytestmark = pytest.mark.unit


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_op_matches_reference_autograd(dtype, tol) -> None:
    from gemma3_runtime.perf.geglu import geglu_reference

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 5, 64, generator=g) * 2).to(dtype)
    dy = torch.randn(3, 5, 32, generator=g).to(dtype)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = torch.ops.gemma3.geglu(xa), geglu_reference(xb)
    assert ya.shape == (3, 5, 32) and ya.dtype == dtype
    assert _rel(ya, yb) < tol
    ya.backward(dy)
    yb.backward(dy)
    assert _rel(xa.grad, xb.grad) < tol
    torch.library.opcheck(torch.ops.gemma3.geglu.default, (x.float(),))


def _build():
    from gemma3_runtime.model.provider import Gemma3ModelProvider
    from gemma3_runtime.perf.apply import fill_model_hooks
    from gemma3_runtime.perf.config import PerfConfig

    prov = Gemma3ModelProvider.from_config(
        tiny_config(vocab=300),
        device="cpu",
        attention_kernel="sdpa",
        seed=7,
    )
    torch.manual_seed(7)
    model = prov.provide_distributed_model()[0]
    fill_model_hooks([model], PerfConfig())  # the fused loss, as in training
    return model


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, position_ids=torch.arange(ids.shape[1]).expand_as(ids), labels=ids)
    loss.mean().backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_swapped_mlp_equals_plain_eager_and_compiled() -> None:
    from torch._dynamo.utils import counters

    from gemma3_runtime.perf.compile import compile_model
    from gemma3_runtime.perf.geglu import use_fused_geglu

    plain, fused = _build(), _build()
    fused.load_state_dict(plain.state_dict())
    keys = sorted(fused.state_dict())
    assert use_fused_geglu([fused]) == tiny_config(vocab=300).num_layers
    assert sorted(fused.state_dict()) == keys
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    loss_p, grads_p = _loss_and_grads(plain, ids)
    loss_f, grads_f = _loss_and_grads(fused, ids)
    assert _rel(loss_f, loss_p) < 1e-6
    assert grads_f.keys() == grads_p.keys()
    for name in grads_p:
        assert _rel(grads_f[name], grads_p[name]) < 1e-5, name
    torch._dynamo.reset()
    counters.clear()
    compile_model(fused, "layers", backend="aot_eager")
    for _ in range(2):
        loss_c, grads_c = _loss_and_grads(fused, ids)
        assert _rel(loss_c, loss_p) < 1e-6
        for name in grads_p:
            assert _rel(grads_c[name], grads_p[name]) < 1e-5, name
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    fused.eval()
    with torch.no_grad():  # eval: megatron's own MLP code path
        pos = torch.arange(20).expand_as(ids)
        assert _rel(fused(input_ids=ids, position_ids=pos), plain.eval()(input_ids=ids, position_ids=pos)) < 1e-6
    torch._dynamo.reset()


def test_switch_is_cuda_only() -> None:
    from gemma3_runtime.perf import apply
    from gemma3_runtime.perf.config import PerfConfig

    model = _build()
    applied = apply.apply([model], PerfConfig(fused_geglu=True, compile="none"), torch.device("cpu"))
    assert applied["fused_geglu"] == 0
    assert not any(type(m).__name__.startswith("FusedGeGLU") for m in model.modules())
    assert PerfConfig.plain().fused_geglu is False


_TRITON_CHECK = """
import torch
from gemma3_runtime.perf import geglu_triton
from gemma3_runtime.perf.geglu import _geglu_backward_math
device = "cuda" if torch.cuda.is_available() else "cpu"
assert geglu_triton.available(torch.empty(0, device=device))
g = torch.Generator().manual_seed(0)
for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
    x = (torch.randn(5, 3, 2 * 1100, generator=g) * 2).to(device, dtype)   # width not a multiple of the block
    dy = torch.randn(5, 3, 1100, generator=g).to(device, dtype)
    got, want = geglu_triton.geglu_backward(x, dy).double(), _geglu_backward_math(x, dy).double()
    rel = float((got - want).norm() / want.norm())
    assert rel < tol, (dtype, rel)
print("ok")
"""


def test_triton_backward_kernel_matches_the_formula() -> None:
    """The hand-written Triton GeGLU backward equals the torch formula (fp32 and bf16, a ragged last block): on a
    GPU directly, on CPU through the Triton interpreter in a subprocess (it must be on before triton imports)."""
    from triton_helpers import run_triton_check

    run_triton_check(_TRITON_CHECK)

"""perf.optim.use_fused_adamw finds the torch AdamW inside megatron-style wrappers and leaves CPU params alone."""

from __future__ import annotations

import pytest
import torch

from gemma3_runtime.perf.optim import _torch_optimizers, use_fused_adamw

pytestmark = pytest.mark.unit


class _Wrapper:
    def __init__(self, inner):
        self.optimizer = inner


class _Chained:
    def __init__(self, *opts):
        self.chained_optimizers = list(opts)


def test_finds_inner_optimizers_and_skips_cpu() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    a = torch.optim.AdamW([p], lr=1e-3)
    b = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    chained = _Chained(_Wrapper(a), _Wrapper(b))
    assert list(_torch_optimizers(chained)) == [a, b]
    assert use_fused_adamw(chained) == 0  # CPU parameters: unchanged
    assert not a.param_groups[0]["fused"]


def test_foreach_replacements_compute_the_fallbacks_values() -> None:
    from megatron.core.utils import local_multi_tensor_scale

    from gemma3_runtime.perf.optim import foreach_l2_norm, foreach_scale

    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(n, generator=g) for n in (3, 17, 1, 64)]
    ours, _ = foreach_l2_norm(0, None, [ts], False)
    ref = torch.linalg.vector_norm(torch.cat([t.reshape(-1) for t in ts]))
    assert ours.shape == (1,) and torch.allclose(ours[0], ref, rtol=1e-6)
    a = [t.clone() for t in ts]
    b = [t.clone() for t in ts]
    foreach_scale(0, None, [a, a], 0.37)
    local_multi_tensor_scale(0, None, [b, b], 0.37)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=False))
    dst = [torch.empty_like(t) for t in ts]
    foreach_scale(0, None, [ts, dst], 2.0)
    assert all(torch.equal(d, t * 2.0) for d, t in zip(dst, ts, strict=False))


class _FakeMegatron:
    """The part of megatron's MixedPrecisionOptimizer interface sync_free_step uses, around a torch AdamW."""

    def __init__(self, params, clip: float, fused: bool) -> None:
        from types import SimpleNamespace

        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=0.1, weight_decay=0.01, fused=fused)
        self.config = SimpleNamespace(
            clip_grad=clip, log_num_zeros_in_grad=False, use_precision_aware_optimizer_no_fp8_or_ds_fp8=False
        )
        self.grad_scaler = None

    def prepare_grads(self) -> bool:
        return False

    def get_main_grads_for_grad_norm(self):
        return [p.grad for p in self.params]

    def get_grad_stats_parallel_group(self):
        return None

    def step_with_ready_grads(self) -> bool:
        self.optimizer.step()
        return True


@pytest.mark.parametrize("clip", [0.5, 100.0, 0.0])
def test_sync_free_step_is_megatrons_clip_then_adam(clip: float) -> None:
    """Clipping folded into fused Adam's grad_scale == megatron's `grads *= clip / (norm + 1e-6)` (when < 1) followed
    by Adam; the norm comes back as a device tensor. CPU fused AdamW stands in for the CUDA one."""
    from gemma3_runtime.perf.optim import sync_free_step, sync_free_unsupported

    g = torch.Generator().manual_seed(1)
    init = [torch.randn(n, generator=g) for n in (5, 33)]
    grads = [torch.randn(n, generator=g) * 3 for n in (5, 33)]

    def params():
        ps = [torch.nn.Parameter(t.clone()) for t in init]
        for p, gr in zip(ps, grads, strict=False):
            p.grad = gr.clone()
        return ps

    ours = _FakeMegatron(params(), clip, fused=True)
    assert sync_free_unsupported(ours) is None
    norm = sync_free_step(ours)
    assert isinstance(norm, torch.Tensor)

    ref_params = params()
    ref = torch.optim.AdamW(ref_params, lr=0.1, weight_decay=0.01)
    ref_norm = torch.linalg.vector_norm(torch.cat([p.grad for p in ref_params]))
    coeff = clip / (float(ref_norm) + 1e-6)
    if clip > 0 and coeff < 1.0:
        for p in ref_params:
            p.grad.mul_(coeff)
    ref.step()
    assert abs(float(norm) - float(ref_norm)) < 1e-5 * float(ref_norm)
    for a, b in zip(ours.params, ref_params, strict=False):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert getattr(ours.optimizer, "grad_scale", None) is None  # nothing left behind for the next step


def test_sync_free_step_refuses_what_needs_a_host_value() -> None:
    from gemma3_runtime.perf.optim import sync_free_unsupported

    p = [torch.nn.Parameter(torch.zeros(2))]
    assert "fused" in sync_free_unsupported(_FakeMegatron(p, 1.0, fused=False))
    scaled = _FakeMegatron(p, 1.0, fused=True)
    scaled.grad_scaler = object()
    assert "loss scaler" in sync_free_unsupported(scaled)

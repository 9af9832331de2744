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
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    dst = [torch.empty_like(t) for t in ts]
    foreach_scale(0, None, [ts, dst], 2.0)
    assert all(torch.equal(d, t * 2.0) for d, t in zip(dst, ts))

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

"""training/pending.py: a step's loss sum, token count and grad norm come back as the values given, whether the grad
norm is a float (CPU optimizer) or a device tensor (the sync-free CUDA step)."""

from __future__ import annotations

import pytest
import torch

from gemma3_runtime.training.pending import PendingStep

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("norm", [2.5, torch.tensor(2.5), torch.tensor([2.5])])
def test_resolve_gives_the_step_values(norm) -> None:
    totals = torch.tensor([12.0, 4.0], dtype=torch.float64)
    pending = PendingStep(7, 1e-3, totals, norm)
    totals.zero_()  # the step's values were taken when captured
    assert pending.ready()
    v = pending.resolve()
    assert (v.iteration, v.lr, v.loss, v.count, v.grad_norm) == (7, 1e-3, 3.0, 4.0, 2.5)


def test_no_loss_tokens_gives_zero_loss() -> None:
    v = PendingStep(1, 0.1, torch.zeros(2, dtype=torch.float64), 0.0).resolve()
    assert v.loss == 0.0 and v.count == 0.0

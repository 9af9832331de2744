"""GPU tier: perf.fp8 with real float8 GEMMs (torch._scaled_mm on sm89+), inside the compiled layers the Trainer
builds, through the training step users run. The tiny recipe's few steps stay within 2% of bf16's losses on the
same batches from the same init (the 1B's 200-step check is bench/gpu_session/fp8_loss.py)."""

from __future__ import annotations

import pytest
import torch
from train_helpers import tiny_pretrain_cfg

pytestmark = pytest.mark.gpu


@pytest.fixture
def fp8_gpu() -> None:
    """The tier's prerequisite; missing, it fails with one line (never skips)."""
    from gemma3_runtime.perf.fp8 import fp8_unsupported

    reason = fp8_unsupported(torch.device("cuda"))
    if reason:
        pytest.fail(f"fp8 GPU tier: {reason}", pytrace=False)


def _losses(tmp_path, fp8: str) -> tuple[list[float], dict]:
    from gemma3_runtime.training.trainer import Trainer

    cfg = tiny_pretrain_cfg(tmp_path / fp8, train_iters=4, gbs=4, seq=64, **{"perf.fp8": fp8})
    cfg.train.device = "cuda"
    with Trainer(cfg) as trainer:
        trainer.build()
        losses = [trainer.train_step().resolve().loss for _ in range(4)]
        return losses, dict(trainer.speed_layer)


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_fp8_training_steps_close_to_bf16_on_cuda(fp8_gpu, tmp_path, recipe: str) -> None:
    ref, ref_layer = _losses(tmp_path, "none")
    got, layer = _losses(tmp_path, recipe)
    assert ref_layer["fp8_linears"] == 0 and layer["fp8_linears"] > 0, layer
    assert layer["compiled_modules"] > 0  # the float8 matmuls ran inside the compiled layers
    assert got != ref  # the float8 path ran
    for a, b in zip(ref, got, strict=True):
        assert abs(a - b) <= 0.02 * abs(a), (ref, got)

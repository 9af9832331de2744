"""The Trainer's pieces are the run: stepping a built Trainer by hand (what bench/train_throughput.py does) gives the
per-step losses `fit()` records, and the run's result says what the speed layer applied. Tiny model, CPU."""

from __future__ import annotations

import json

import pytest
from train_helpers import tiny_pretrain_cfg

pytestmark = pytest.mark.unit


def test_train_steps_by_hand_equal_the_fitted_run(tmp_path):
    from gemma3_runtime.training.trainer import Trainer, train

    result = train(tiny_pretrain_cfg(tmp_path / "fit", train_iters=3))
    assert result.status == "completed" and result.iteration == 3
    assert result.speed_layer["attention"] == "auto" and "compiled_modules" in result.speed_layer
    fitted = [json.loads(line)["loss"] for line in (tmp_path / "fit" / "steps.jsonl").read_text().splitlines()]

    with Trainer(tiny_pretrain_cfg(tmp_path / "by_hand", train_iters=3)) as trainer:
        trainer.build()
        assert trainer.speed_layer == result.speed_layer
        by_hand = [trainer.train_step().resolve().loss for _ in range(3)]
        assert trainer.train_state.iteration == 3
    assert by_hand == pytest.approx(fitted, rel=1e-6)

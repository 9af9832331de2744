"""Exact resume on CPU: 2N steps straight == N steps, save, resume, N steps (per-step losses and every tensor of
the final checkpoint, optimizer state included, torch.equal) - for pretraining and for full finetuning."""

import pytest
from train_helpers import assert_same_tensors, checkpoint_tensors, tiny_pretrain_cfg

pytestmark = pytest.mark.unit

N = 2


def _straight_and_resumed(tmp_path, make_cfg):
    from gemma3_runtime.training.trainer import train

    straight = train(make_cfg(tmp_path / "straight"))
    assert straight.status == "completed" and straight.iteration == 2 * N

    first = make_cfg(tmp_path / "resumed")
    first.train.exit_interval = N
    half = train(first)
    assert half.status == "stopped" and half.iteration == N
    rest = train(make_cfg(tmp_path / "resumed"))
    assert rest.status == "completed" and rest.iteration == 2 * N

    straight_losses = [row[1] for row in straight.train_losses]
    resumed_losses = [row[1] for row in rest.train_losses]  # history continues across the resume
    assert resumed_losses == straight_losses
    assert len(set(straight_losses)) > 1  # the run actually trains
    assert_same_tensors(checkpoint_tensors(tmp_path / "straight"), checkpoint_tensors(tmp_path / "resumed"))
    return straight


def test_pretraining_resume_is_exact(tmp_path):
    run = _straight_and_resumed(tmp_path, lambda save: tiny_pretrain_cfg(save, train_iters=2 * N))
    assert any(k.startswith("optimizer.state.exp_avg.") for k in checkpoint_tensors(tmp_path / "straight"))
    assert run.train_losses[-1][1] < run.train_losses[0][1]


def test_full_finetuning_resume_is_exact(tmp_path):
    from gemma3_runtime.training.recipes import gemma3_tiny_finetune_config
    from gemma3_runtime.training.trainer import train

    base = tiny_pretrain_cfg(tmp_path / "base", train_iters=1, **{"train.seed": 7})
    train(base)  # a "pretrained" checkpoint of the tiny model

    def finetune(save):
        cfg = gemma3_tiny_finetune_config(
            name="ft",
            pretrained_checkpoint=str(tmp_path / "base"),
            train_iters=2 * N,
            global_batch_size=4,
            seq_length=16,
            finetune_lr=5e-3,
            lr_warmup_iters=1,
            dir=str(save),
        )
        cfg.data.kind = "mock"  # the tiny vocabulary cannot hold real tokenizer ids
        cfg.train.device = "cpu"
        cfg.eval.interval = None
        cfg.checkpoint.save_interval = None
        cfg.logging.loss_curve_png = False
        return cfg

    _straight_and_resumed(tmp_path, finetune)
    # the finetune started from the base weights, not from a fresh init
    from gemma3_runtime.training.trainer import train as _  # noqa: F401

    base_embed = checkpoint_tensors(tmp_path / "base")["embedding.word_embeddings.weight"]
    fresh = train(tiny_pretrain_cfg(tmp_path / "fresh", train_iters=1, **{"train.seed": 5678}))
    assert fresh.status == "completed"
    tuned = checkpoint_tensors(tmp_path / "straight")["embedding.word_embeddings.weight"]
    fresh_embed = checkpoint_tensors(tmp_path / "fresh")["embedding.word_embeddings.weight"]
    assert (tuned - base_embed).abs().max() < (tuned - fresh_embed).abs().max()

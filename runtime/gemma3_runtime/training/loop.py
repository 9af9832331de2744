"""The training loop of a built `Trainer`: steps, metrics every log interval, evals every N steps, checkpoints every
save_interval, at the end and on preemption; the run's result.

A step's values are read one step late (training/progress.py), so the host stays a step ahead of the GPU; the
preemption check is a CPU collective (training/preemption.py), so it does not make the host wait either.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from gemma3_runtime.training.run_setup import TrainResult

log = logging.getLogger("gemma3_runtime.training")


def fit_loop(trainer: Any) -> TrainResult:
    """Train a built Trainer from its current iteration to train.train_iters, or until a planned exit or a
    preemption; evaluate and save at the end of a completed run."""
    from gemma3_runtime.training.preemption import PreemptionWatcher
    from gemma3_runtime.training.progress import StepRecord, open_steps_file

    cfg, state = trainer.cfg, trainer.train_state
    start_iter = trainer.start_iter
    if start_iter == 0 and cfg.eval.at_start and trainer.evals_enabled:
        trainer.run_evals(0, "start")
    trainer.watcher = PreemptionWatcher()
    # per-step record (rank 0): the loss of every step at full precision, appended across resumes
    save_dir = trainer.save_dir
    steps_file = open_steps_file(Path(save_dir), start_iter) if (trainer.is_rank0 and save_dir) else None
    trainer.record = record = StepRecord(state, trainer.sink, steps_file)
    status, last_saved = "completed", None
    tokens_per_step = cfg.train.global_batch_size * cfg.data.seq_length
    try:
        for it in range(start_iter, cfg.train.train_iters):
            record.add(trainer.train_step(), tokens_per_step)
            if trainer.saver is not None:  # checkpoint.async_save: commit a background save once written
                trainer.saver.poll()
            iteration = state.iteration
            last = iteration == cfg.train.train_iters
            log_now = iteration % cfg.logging.log_interval == 0 or it == start_iter or last
            eval_now = bool(cfg.eval.interval) and iteration % cfg.eval.interval == 0 and not last
            stop = trainer.watcher.agreed_stop()
            planned_exit = bool(cfg.train.exit_interval) and iteration % cfg.train.exit_interval == 0 and not last
            save_every = cfg.checkpoint.save_interval
            save_now = stop or planned_exit or bool(save_every and iteration % save_every == 0)
            record.settle(keep_newest=not (log_now or eval_now or save_now))
            if log_now:
                _log_metrics(trainer, iteration)
            paused = time.time()
            if eval_now:
                trainer.run_evals(iteration, "eval")
            if save_now:  # a preemption or planned exit waits for its checkpoint's commit
                last_saved = trainer.save(blocking=stop or planned_exit)
            if planned_exit and not stop:
                status = "stopped"
                if trainer.is_rank0:
                    exit_interval = cfg.train.exit_interval
                    print(f"stopping at iteration {iteration} (train.exit_interval={exit_interval})", flush=True)
                break
            record.exclude(paused)  # evals and saves do not count as training time
            if stop:
                status = "preempted"
                if trainer.is_rank0:
                    print(
                        f"preempted ({trainer.watcher.received or 'another rank'}) at iteration {iteration}: "
                        f"{'checkpoint committed, ' if last_saved else 'no save dir, '}exiting for requeue",
                        flush=True,
                    )
                break
        record.settle(keep_newest=False)
        if trainer.saver is not None:  # an error skips this: the uncommitted save is left as a killed one is
            trainer.saver.wait()
    finally:
        trainer.watcher.restore()
        record.close()
    if status == "completed":
        last_saved = _finish(trainer, start_iter, last_saved)
    trainer.sink.close({"status": status})
    trainer.sink = None
    _write_loss_curve(trainer)
    return TrainResult(
        status=status,
        iteration=state.iteration,
        train_losses=state.train_losses,
        eval_losses=state.eval_losses,
        task_accuracies=state.task_accuracies,
        seconds=time.time() - trainer.started,
        save_dir=save_dir,
        checkpoint=str(last_saved) if last_saved else None,
        speed_layer=dict(trainer.speed_layer),
    )


def _log_metrics(trainer: Any, iteration: int) -> None:
    from gemma3_runtime.training.metrics import memory_gib

    record, latest = trainer.record, trainer.record.latest
    window = record.window_metrics(trainer.device)
    tflops = trainer.flops_per_token * window["tokens_per_s"] / trainer.world / 1e12
    metrics = {
        "loss": latest.loss,
        "lr": latest.lr,
        "grad_norm": latest.grad_norm,
        "tokens_per_s": window["tokens_per_s"],
        "step_s": window["step_s"],
        "tflops_per_gpu": tflops,
        "mfu": tflops / trainer.peak if trainer.peak else None,
        "loss_tokens": latest.count,
        **memory_gib(trainer.device),
    }
    trainer.sink.log(iteration, metrics)


def _finish(trainer: Any, start_iter: int, last_saved: Path | None) -> Path | None:
    """End-of-run evals and the final checkpoint (unless this iteration was just saved)."""
    from gemma3_runtime.checkpoint.layout import iter_dir_name

    iteration = trainer.train_state.iteration
    if trainer.evals_enabled and iteration > start_iter:
        trainer.run_evals(iteration, "end")
    saved_now = last_saved is not None and last_saved.name == iter_dir_name(iteration)
    if trainer.cfg.checkpoint.save_at_end and iteration > start_iter and not saved_now:
        last_saved = trainer.save()
    return last_saved


def _write_loss_curve(trainer: Any) -> None:
    from gemma3_runtime.training.metrics import write_loss_curve

    cfg, state = trainer.cfg, trainer.train_state
    if not (trainer.is_rank0 and trainer.save_dir and cfg.logging.loss_curve_png and state.train_losses):
        return
    try:
        write_loss_curve(Path(trainer.save_dir) / "loss_curve.png", state.train_losses, state.eval_losses, cfg.name)
    except Exception as exc:  # a plot must never fail a finished run
        log.warning("loss curve not written: %s", exc)

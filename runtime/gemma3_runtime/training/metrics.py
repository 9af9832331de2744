"""Where metrics go: one line per log interval on stdout (rank 0) with step/total, elapsed time and ETA, TensorBoard
event files, W&B (training/wandb_run.py says when it is on), a progress bar on an interactive terminal, the per-step
records of steps.jsonl (with wall-clock timestamps), and a loss-curve PNG in the save dir at the end."""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from gemma3_runtime.progress import eta_text, format_duration, now_iso

log = logging.getLogger("gemma3_runtime.training")


def memory_gib(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {
            "mem_alloc_gib": torch.cuda.memory_allocated(device) / 2**30,
            "mem_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        }
    # Linux ru_maxrss is in KiB
    return {"rss_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


class MetricsSink:
    """Rank 0 only does anything; other ranks get a sink whose calls are no-ops."""

    def __init__(
        self,
        enabled: bool,
        tensorboard_dir: str | None,
        wandb_project: str | None,
        run_name: str,
        config: dict[str, Any],
        total_iters: int,
        start_iter: int,
        progress_bar: bool | None,
    ) -> None:
        self.enabled = enabled
        self.tb = None
        self.wandb = None
        self.bar = None
        self.progress = Progress(total_iters, start_iter)
        self.last_iteration = start_iter
        if not enabled:
            return
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=tensorboard_dir)
            except ImportError:
                log.warning("tensorboard is not installed: no event files")
        from gemma3_runtime.training.wandb_run import options_from_config, start_run

        wandb_options = options_from_config(config, run_name)
        wandb_options.project = wandb_project or wandb_options.project
        self.wandb = start_run(wandb_options, config)
        show_bar = sys.stderr.isatty() if progress_bar is None else progress_bar
        if show_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_iters, initial=start_iter, unit="step", dynamic_ncols=True)
        self.progress = Progress(total_iters, start_iter)  # from here: W&B's start-up is not training time

    def log(self, iteration: int, metrics: dict[str, float], line: bool = True) -> None:
        if not self.enabled:
            return
        if self.tb is not None:
            for key, value in metrics.items():
                if value is not None:
                    self.tb.add_scalar(key, value, iteration)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in metrics.items() if v is not None}, step=iteration)
        self.last_iteration = max(self.last_iteration, iteration)
        if line:
            text = " | ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if v is not None)
            message = f"{now_iso()} | {self.progress.line(iteration)} | {text}"
            if self.bar is not None:
                self.bar.write(message)
            else:
                print(message, flush=True)

    def advance(self, loss: float | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}")

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """`summary`: final values for the W&B run summary (W&B already keeps each metric's last value)."""
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            try:
                self.wandb.summary.update(
                    {"final_iteration": self.last_iteration, "elapsed_s": self.progress.elapsed(), **(summary or {})}
                )
                self.wandb.finish()
            except Exception as exc:  # W&B must never fail a finished run
                log.warning("W&B run not finished cleanly (%s)", type(exc).__name__)


class Progress:
    """Step/total, elapsed and ETA for the log line. The rate is measured from the first logged step on (the first
    step's compile and warm-up are not a good predictor) and includes evals and saves, so the ETA is wall-clock."""

    def __init__(self, total_iters: int, start_iter: int) -> None:
        self.total = total_iters
        self.start_iter = start_iter
        self.started = time.monotonic()
        self.first: tuple[int, float] | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def eta_s(self, iteration: int) -> float | None:
        now = time.monotonic()
        if self.first is None:  # the first line: the average over the steps so far (warm-up included)
            self.first = (iteration, now)
            done, seconds = iteration - self.start_iter, now - self.started
        else:
            done, seconds = iteration - self.first[0], now - self.first[1]
        if done <= 0 or seconds <= 0:
            return None
        return max(self.total - iteration, 0) * seconds / done

    def line(self, iteration: int) -> str:
        eta = self.eta_s(iteration)
        width = len(str(self.total))
        return (
            f"step {iteration:>{width}d}/{self.total} | elapsed {format_duration(self.elapsed())} | eta {eta_text(eta)}"
        )


def step_record(iteration: int, loss: float, lr: float, grad_norm: float | None) -> dict[str, Any]:
    """One steps.jsonl line: the step's values and when it finished (unix seconds and ISO 8601, UTC), so a reader
    (`gemma3-launch status`) can compute progress, rate and ETA."""
    now = time.time()
    return {
        "iteration": iteration,
        "loss": loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "time": round(now, 3),
        "timestamp": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
    }


def _fmt(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4f}"


def write_loss_curve(path: Path, train_losses: list, eval_losses: list, title: str) -> None:
    """Train loss per step (+ held-out loss points) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train_losses:
        ax.plot([r[0] for r in train_losses], [r[1] for r in train_losses], label="train loss", linewidth=1)
    if eval_losses:
        ax.plot([r[0] for r in eval_losses], [r[1] for r in eval_losses], "o-", label="held-out loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)

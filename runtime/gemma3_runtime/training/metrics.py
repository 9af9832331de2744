"""Where metrics go: one line per log interval on stdout (rank 0), TensorBoard event files, W&B (only when
WANDB_API_KEY is set and wandb is importable), a progress bar on an interactive terminal, and a loss-curve PNG
in the save dir at the end."""

from __future__ import annotations

import logging
import os
import resource
import sys
from pathlib import Path
from typing import Any

import torch

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
        if not enabled:
            return
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=tensorboard_dir)
            except ImportError:
                log.warning("tensorboard is not installed: no event files")
        if os.environ.get("WANDB_API_KEY"):
            try:
                import wandb  # type: ignore[import-not-found]

                self.wandb = wandb.init(
                    project=wandb_project or "gemma3-launch", name=run_name, config=config, resume="allow"
                )
            except ImportError:
                log.warning("WANDB_API_KEY is set but wandb is not installed: W&B logging is off")
        show_bar = sys.stderr.isatty() if progress_bar is None else progress_bar
        if show_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_iters, initial=start_iter, unit="step", dynamic_ncols=True)

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
        if line:
            text = " | ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if v is not None)
            message = f"iteration {iteration:>7d} | {text}"
            if self.bar is not None:
                self.bar.write(message)
            else:
                print(message, flush=True)

    def advance(self, loss: float | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


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

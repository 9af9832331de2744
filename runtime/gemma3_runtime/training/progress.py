"""The record of a run's steps: each step's values on their way to the host, the steps.jsonl file and the
throughput window of the logged metrics.

Each step's loss / grad norm reaches the host while the next step runs (training/pending.py); `settle` books the
steps whose values are in - and all of them before anything that reads them (logs, evals, saves, exits).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

import torch

from gemma3_runtime.training.metrics import step_record
from gemma3_runtime.training.pending import PendingStep, StepValues
from gemma3_runtime.training.state import TrainState


class StepRecord:
    """Books resolved steps into the train state, the metrics sink and (rank 0 with a save dir) steps.jsonl."""

    def __init__(self, train_state: TrainState, sink: Any, steps_file: IO[str] | None) -> None:
        self.train_state, self.sink, self.steps_file = train_state, sink, steps_file
        self.pending: list[PendingStep] = []
        self.latest: StepValues | None = None
        self.window_start, self.window_tokens, self.window_steps = time.time(), 0, 0

    def add(self, step: PendingStep, tokens: int) -> None:
        self.pending.append(step)
        self.window_tokens += tokens
        self.window_steps += 1

    def settle(self, keep_newest: bool) -> None:
        """Book every pending step, or all but the newest one (whose values may still be on their way)."""
        while self.pending and (len(self.pending) > 1 or not keep_newest):
            v = self.pending.pop(0).resolve()
            self.train_state.train_losses.append([v.iteration, v.loss, v.lr])
            self.sink.advance(v.loss)
            if self.steps_file is not None:
                record = step_record(v.iteration, v.loss, v.lr, v.grad_norm)
                self.steps_file.write(json.dumps(record) + "\n")
                self.steps_file.flush()
            self.latest = v

    def window_metrics(self, device: torch.device) -> dict[str, float]:
        """Tokens per second and seconds per step since the last call (waits for the GPU to finish first)."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.time() - self.window_start
        metrics = {
            "tokens_per_s": self.window_tokens / max(elapsed, 1e-9),
            "step_s": elapsed / max(self.window_steps, 1),
        }
        self.window_start, self.window_tokens, self.window_steps = time.time(), 0, 0
        return metrics

    def exclude(self, since: float) -> None:
        """Leave the time since `since` (evals, saves) out of the throughput window."""
        self.window_start += time.time() - since

    def close(self) -> None:
        if self.steps_file is not None:
            self.steps_file.close()
            self.steps_file = None


def open_steps_file(save_dir: Path, start_iter: int) -> IO[str]:
    """steps.jsonl keeps the steps up to the resume point (a killed run may have logged steps it never saved)."""
    save_dir.mkdir(parents=True, exist_ok=True)
    path = save_dir / "steps.jsonl"
    kept = []
    if path.exists() and start_iter > 0:
        kept = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("iteration", 0) <= start_iter
        ]
    path.write_text("".join(line + "\n" for line in kept))
    return open(path, "a")  # noqa: SIM115  (StepRecord.close closes it)

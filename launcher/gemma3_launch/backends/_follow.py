"""Streaming a run dir's job.log until the job ends: shared by the local and SLURM backends (same log file)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..record import LOG_FILE, TERMINAL_STATES


def print_log(run_dir: str | Path, follow: bool, state: Callable[[], str], poll_s: float = 0.5) -> None:
    """Print job.log; with `follow`, keep printing new output until `state()` is terminal (backoff up to 5 s)."""
    path = Path(run_dir) / LOG_FILE
    out = sys.stdout.buffer
    pos = 0
    delay = poll_s
    while True:
        if path.exists():
            with open(path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
            if chunk:
                out.write(chunk)
                out.flush()
                pos += len(chunk)
                delay = poll_s
        if not follow:
            return
        if state() in TERMINAL_STATES:
            time.sleep(0.2)  # the last lines land after the state file
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(pos)
                    out.write(f.read())
                    out.flush()
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)

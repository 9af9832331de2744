"""The job wrapper's shared records: where each step attempt's result, worker exits and executed commands live.

Torch-free; both levels of the wrapper (jobwrap: the job, jobwrap_node: a node and its ranks) read and write these.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .contract import REQUEUE_EXIT_CODE
from .plan import CONTAINER_NAME_ARG, CONTAINER_NAME_ENV, JobPlan, Step
from .record import PLAN_FILE, read_json

RANK_EXIT_DIR_ENV = "GEMMA3_RANK_EXIT_DIR"
#: every command the wrappers executed, one JSON line each (level job|node, argv, attempt, host).
COMMANDS_FILE = "commands.jsonl"


class Redactor:
    """Replaces secret values in the job's output, so a step that echoes its environment cannot leak them."""

    def __init__(self, names: Sequence[str]):
        self.values = sorted({os.environ[n] for n in names if len(os.environ.get(n, "")) >= 4}, key=len, reverse=True)

    def __call__(self, data: bytes) -> bytes:
        for v in self.values:
            data = data.replace(v.encode(), b"***")
        return data


def pump(proc: subprocess.Popen, redact: Redactor) -> None:
    """Copy the child's output to ours, cut at line ends (\\n or \\r, so progress bars stay live), redacted."""
    assert proc.stdout is not None
    out = sys.stdout.buffer
    buf = b""

    def emit(data: bytes) -> None:
        clean = redact(data)
        out.write(clean)
        out.flush()

    while True:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buf += chunk
        cut = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
        if cut >= 0:
            emit(buf[: cut + 1])
            buf = buf[cut + 1 :]
    if buf:
        emit(buf)


def answers(answers_file: str | None) -> list[str]:
    """A generate step's answers from its JSONL answers file (prompt, text): the part of the summary people read."""
    if not answers_file:
        return []
    out: list[str] = []
    try:
        with open(answers_file, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                out.append(f"{rec.get('prompt', '')!r} -> {str(rec.get('text', '')).strip()!r}")
    except (OSError, ValueError, AttributeError):
        return []
    return out[:10]


def result_file(run_dir: Path, step: Step, attempt: int) -> Path:
    """Where the runtime writes this attempt's structured result of `step` (gemma3_runtime.cli.result)."""
    return run_dir / "results" / f"{step.name}-{attempt}.json"


def step_result(run_dir: Path, step: Step, attempt: int) -> dict:
    """The runtime's result.json for this attempt of `step`, or {} when the step wrote none (it crashed)."""
    found = read_json(result_file(run_dir, step, attempt))
    return found if isinstance(found, dict) else {}


def executed_command(step: Step) -> list[str]:
    """The plan's command for `step` as executed: the one documented run-time value, the container name (unique per
    job and attempt, exported by the batch script), substituted in its own argv element; nothing else changes."""
    name = os.environ.get(CONTAINER_NAME_ENV, "")
    return [f"--container-name={name}" if arg == CONTAINER_NAME_ARG else arg for arg in step.command]


def log_command(run_dir: Path, level: str, step: Step, argv: Sequence[str]) -> None:
    """Append what this wrapper executes to commands.jsonl: `render` shows the same lines (tests compare them)."""
    entry = {
        "level": level,
        "step": step.name,
        "argv": list(argv),
        "attempt": attempt_number(),
        "host": socket.gethostname(),
        "node_rank": os.environ.get("SLURM_NODEID"),
    }
    with open(run_dir / COMMANDS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def attempt_number() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def load_plan(run_dir: Path) -> JobPlan | None:
    data = read_json(run_dir / PLAN_FILE)
    if not isinstance(data, dict):
        return None
    try:
        return JobPlan.from_dict(data)
    except ValueError as exc:
        print(f"jobwrap: {run_dir / PLAN_FILE}: {exc}", file=sys.stderr)
        return None


def exit_dir(run_dir: Path, step: Step) -> Path:
    """Where the workers of this attempt of `step` record their exit codes (`rank-<RANK>.json`)."""
    return run_dir / "exit" / f"{step.name}-{attempt_number()}"


def rank_records(exit_dir: Path) -> list[dict]:
    """The exit records the step's workers wrote so far (unreadable ones skipped)."""
    return [c for c in (read_json(p) for p in exit_dir.glob("rank-*.json")) if c]


def asked_for_requeue(codes: list[int]) -> bool:
    """The workers saved a checkpoint and asked for a requeue: some exited REQUEUE_EXIT_CODE, none failed."""
    return bool(codes) and REQUEUE_EXIT_CODE in codes and set(codes) <= {0, REQUEUE_EXIT_CODE}


def every_rank_asked_for_requeue(run_dir: Path, step: Step) -> bool:
    """All workers of the step recorded exits and they ask for a requeue (a single-process step has none). Needed at
    the job level because
    srun runs with --kill-on-bad-exit: the first node to return 199 makes srun terminate the others, whose node
    wrappers then exit 143 although their workers had saved and exited 199 too - and srun reports that 143."""
    exits = [c["exit_code"] for c in rank_records(exit_dir(run_dir, step))]
    return len(exits) == step.world_size and asked_for_requeue(exits)


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux PR_SET_PDEATHSIG): a worker whose torchrun, or a node wrapper
    whose job wrapper, was killed must not train on unsupervised (a retry would run beside it)."""
    import ctypes

    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the setting took
        os.kill(os.getpid(), signal.SIGKILL)

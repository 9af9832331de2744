"""The run directory's job record (job.json): the source of truth about one submission.

Written by the launcher at submit and updated by the job itself (jobwrap), possibly on another host sharing the
file system: every update is read-modify-write under an flock, written to a temp name and renamed, so a reader
never sees half a file. Never holds a secret VALUE (secret names only).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .contract import JOB_RECORD_FILE, TERMINAL_STATE_FILE
from .durable import fsync_dir

PLAN_FILE = "plan.json"
LOCK_FILE = ".job.lock"
LOG_FILE = "job.log"
STEPS_DONE_FILE = "steps_done.json"

#: A submit was killed after the run dir was committed but before the scheduler's job id was recorded: the scheduler
#: may or may not have the job (refreshing asks it; a job that runs records its own states). Set by the registry.
SUBMIT_INTERRUPTED = "SUBMIT_INTERRUPTED"
ACTIVE_STATES = (
    "SUBMITTED",
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "COMPLETING",
    "CONFIGURING",
    "SUSPENDED",
    SUBMIT_INTERRUPTED,
)
TERMINAL_STATES = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "PREEMPTED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_json(path: str | Path) -> dict | None:
    """The JSON object in `path`; None when it is missing, unreadable, not JSON or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):  # ValueError: JSONDecodeError and UnicodeDecodeError
        return None
    return obj if isinstance(obj, dict) else None


#: job.json fields the launcher reads, and the types it can use.
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "job_id": (str,),
    "backend": (str,),
    "run_dir": (str,),
    "name": (str, type(None)),
    "kind": (str, type(None)),
    "state": (str, type(None)),
    "submitted_at": (str, type(None)),
    "spec_hash": (str, type(None)),
    "backend_id": (str, int, type(None)),
    "git": (dict, type(None)),
    "states": (list,),
    "inputs": (dict,),
    "outputs": (dict,),
    "secrets": (list,),
}
_REQUIRED = ("job_id", "backend", "run_dir")
BACKENDS = ("local", "slurm", "k8s")


def load_record_file(path: str | Path) -> tuple[dict | None, str | None]:
    """(record, None) for a usable job.json at `path`, else (None, what is wrong with it in a few words)."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        return None, "expected a job.json (it is missing)"
    except OSError as exc:
        return None, f"expected a readable job.json ({exc.__class__.__name__})"
    except ValueError:
        return None, "expected a job.json holding JSON (it is garbage or truncated)"
    problem = record_problem(obj)
    return (None, problem) if problem else (obj, None)


def record_problem(rec: Any) -> str | None:
    """What makes `rec` unusable as a job record (a wrong type in a field the launcher reads), or None."""
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    for key in _REQUIRED:
        if not rec.get(key):
            return f"expected field '{key}' (missing or empty)"
    for key, types in _RECORD_TYPES.items():
        if key in rec and (isinstance(rec[key], bool) or not isinstance(rec[key], types)):
            return (
                f"expected field '{key}' to be {' or '.join(t.__name__ for t in types)}, got {type(rec[key]).__name__}"
            )
    if rec["backend"] not in BACKENDS:
        return f"expected field 'backend' to be one of {', '.join(BACKENDS)}"
    if not all(isinstance(s, dict) for s in rec.get("states", [])):
        return "expected field 'states' to be a list of objects"
    return None


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    with open(run_dir / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_record(run_dir: str | Path) -> dict | None:
    return read_json(Path(run_dir) / JOB_RECORD_FILE)


def update_record(run_dir: str | Path, change: Callable[[dict], None]) -> dict:
    """Apply `change` to job.json under the lock; returns the new record."""
    run_dir = Path(run_dir)
    with _locked(run_dir):
        rec = read_record(run_dir) or {}
        change(rec)
        write_json_atomic(run_dir / JOB_RECORD_FILE, rec)
        return rec


def add_state(rec: dict, state: str, **facts: Any) -> None:
    """Append to the state history (only when it changes) and set the current state."""
    hist = rec.setdefault("states", [])
    if not hist or hist[-1].get("state") != state or facts:
        hist.append({"state": state, "at": now(), **facts})
    rec["state"] = state


#: job.json: when `gemma3-launch cancel` asked for this attempt's end (a cancel, not a kill; `retry` clears it).
CANCEL_REQUESTED = "cancel_requested_at"
#: the terminal-state reason `status` records for a SLURM job whose batch script was SIGKILLed (backends/slurm.py).
BATCH_KILLED = "batch step killed"

#: set by the job wrapper for everything it starts: its own `pid:start ticks` (the local backend id), so the job's
#: processes can be found after the wrapper is gone even when they left its session (torchrun starts each rank in
#: a session of its own).
JOB_WRAPPER_ENV = "GEMMA3_JOB_WRAPPER"


def process_start_ticks(pid: int) -> str | None:
    """When process `pid` of this host started (clock ticks since boot, /proc); None when there is no such process.
    With the pid it names one process for good: a pid alone may have been reused since."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat[stat.rfind(")") + 2 :].split()[19]
    except (OSError, IndexError):
        return None


def read_terminal_state(run_dir: str | Path) -> dict | None:
    return read_json(Path(run_dir) / TERMINAL_STATE_FILE)


def write_terminal_state(run_dir: str | Path, state: str, exit_code: int, **facts: Any) -> None:
    write_json_atomic(
        Path(run_dir) / TERMINAL_STATE_FILE, {"state": state, "exit_code": exit_code, "at": now(), **facts}
    )

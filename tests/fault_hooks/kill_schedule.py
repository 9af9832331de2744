"""Test-only fault injection: SIGKILL a chosen process of a training job at a chosen iteration.

Production code carries nothing for this: a test puts tests/fault_hooks first on the job's PYTHONPATH and sets
GEMMA3_TEST_FAULTS (read only here); the directory's sitecustomize imports this module when it is set. Once
gemma3_runtime's Trainer is imported (only the runtime processes do), its `train_step` is wrapped so that after the
step that reaches a fault's iteration, on the fault's global rank (RANK), the process SIGKILLs its target:

    rank       itself                              torchrun   its parent
    node       the node wrapper (`jobwrap node`)   wrapper    the job wrapper (`jobwrap job` / submitit's _submit)
    batch      the SLURM batch script's shell

GEMMA3_TEST_FAULTS is JSON: {"dir": DIR, "faults": [{"id": 0, "target": "rank", "rank": 1, "iteration": 5}, ...]}.
A fault with "stray": true first starts a stray process (`sleep`) that its kill leaves behind, recorded as "stray".
A fault fires once: it first creates DIR/fired-<id> (O_EXCL), so a retried or resumed run passing the same
iteration again goes through. The schedule is tests/faults.py's.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import json
import os
import signal
import sys

_SPEC = os.environ.get("GEMMA3_TEST_FAULTS")
_TRAINER = "gemma3_runtime.training.trainer"


def _ancestors() -> list[int]:
    chain, pid = [], os.getpid()
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            break
        pid = int(stat[stat.rfind(")") + 2 :].split()[1])
        chain.append(pid)
    return chain


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _job_processes(match) -> list[int]:
    """Processes of this SLURM job (same SLURM_JOB_ID in their environment) whose command line `match`es."""
    job = os.environ.get("SLURM_JOB_ID", "")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if f"SLURM_JOB_ID={job}".encode() in env and match(_cmdline(int(entry))):
            found.append(int(entry))
    return found


def _targets(target: str) -> list[int]:
    up = _ancestors()
    if target == "rank":
        return [os.getpid()]
    if target == "torchrun":
        return up[:1]
    if target == "node":
        return [p for p in up if "node" in _cmdline(p) and "gemma3_launch.jobwrap" in _cmdline(p)][:1]
    if target == "wrapper":
        local = [p for p in up if "job" in _cmdline(p) and "gemma3_launch.jobwrap" in _cmdline(p)]
        return local[:1] or _job_processes(lambda argv: "submitit.core._submit" in argv)
    if target == "batch":
        return _job_processes(lambda argv: any(a.endswith("slurm_script") for a in argv))
    raise ValueError(f"GEMMA3_TEST_FAULTS: unknown target {target!r}")


def _leave_stray() -> list:
    """Start a process that outlives this rank, as a data-loader worker or a checkpoint-writer child can: a plain
    `sleep` (no parent-death signal), in the job's session. Returns [pid, start ticks] (tests check it is gone)."""
    import subprocess

    proc = subprocess.Popen(
        ["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    with open(f"/proc/{proc.pid}/stat") as f:
        return [proc.pid, f.read().rsplit(")", 1)[1].split()[19]]


def _fire(fault: dict, state_dir: str) -> None:
    try:
        fd = os.open(os.path.join(state_dir, f"fired-{fault['id']}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    pids = _targets(fault["target"])
    stray = _leave_stray() if fault.get("stray") else None
    os.write(fd, json.dumps({**fault, "pids": pids, "stray": stray, "host": os.uname().nodename}).encode())
    os.close(fd)
    print(f"FAULT {fault['id']}: SIGKILL {fault['target']} {pids} at iteration {fault['iteration']}", flush=True)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _patch(module) -> None:
    spec = json.loads(_SPEC)  # type: ignore[arg-type]
    rank = int(os.environ.get("RANK", "0"))
    mine = [f for f in spec["faults"] if int(f["rank"]) == rank]
    original = module.Trainer.train_step

    def train_step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        for fault in mine:
            if self.train_state.iteration == int(fault["iteration"]):
                _fire(fault, spec["dir"])
        return out

    module.Trainer.train_step = train_step


class _AfterTrainerImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TRAINER:
            return None
        sys.meta_path.remove(self)
        import importlib.util

        found = importlib.util.find_spec(name)
        sys.meta_path.insert(0, self)
        if found is None or found.loader is None:
            return found
        exec_module = found.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        found.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return found


if _SPEC:
    sys.meta_path.insert(0, _AfterTrainerImport())

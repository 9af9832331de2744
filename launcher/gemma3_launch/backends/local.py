"""Local backend: the plan's steps as subprocesses of a detached job wrapper on this machine (GPUs or CPU).

The wrapper (`python -m gemma3_launch.jobwrap job RUN_DIR`) is the same one that runs inside SLURM and Kubernetes
jobs, so local runs record, redact and resume exactly as cluster runs do. It is started in its own session so it
survives the CLI (`submit` without `--follow` returns at once); the backend id is `pid:starttime`, so a recycled
PID is never mistaken for our job. That pid is also the job's session and process-group id, and the wrapper puts
the backend id into every step's environment (JOB_WRAPPER_ENV), so the job's processes - steps, torchrun, ranks
(torchrun gives each a session of its own), their data-loader workers and checkpoint-writer children - can be found
after the wrapper is gone. Then (finished, cancelled or SIGKILLed) `status`, `cancel` and so `retry` SIGKILL
whatever is left of them, so a retry never runs beside the previous attempt's survivors.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..plan import JobPlan
from ..quoting import comment_text, shell_command, shell_word
from ..record import JOB_WRAPPER_ENV, LOG_FILE, read_terminal_state
from ..record import process_start_ticks as _starttime
from . import BackendError
from ._follow import print_log


def detect_gpus() -> int:
    """GPUs usable here, without torch: CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L`."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")) if out.returncode == 0 else 0


def job_env(plan: JobPlan) -> dict[str, str]:
    env = dict(os.environ)
    env.update(plan.env)
    if plan.resources.gpus_per_node and "CUDA_VISIBLE_DEVICES" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(plan.resources.gpus_per_node))
    return env


def _command(plan: JobPlan) -> list[str]:
    return [sys.executable, "-m", "gemma3_launch.jobwrap", "job", plan.run_dir]


def render(plan: JobPlan) -> str:
    """The script equivalent of `submit`: the plan's env, then the job wrapper; the comments list the exact commands
    the wrapper executes for each step (the step command, then what the node runs)."""
    lines = [
        "#!/bin/bash",
        f"# gemma3-launch local job {plan.job_id}: {plan.kind}; run dir {comment_text(plan.run_dir)}",
        "# The job wrapper runs these steps in order (from plan.json), logging to job.log:",
    ]
    for i, step in enumerate(plan.steps, 1):
        lines.append(f"#   {i}. {step.name}:")
        lines.append(f"#     {comment_text(shell_command(step.command))}")
        lines.append(f"#     {comment_text(shell_command(step.node_command))}")
    for name in plan.files:
        lines.append(f"# run-dir file (written at submit): {comment_text(name)}")
    if plan.secrets:
        lines.append(
            f"# secrets passed through from this environment (by name): {comment_text(', '.join(plan.secrets))}"
        )
    lines += [f"export {k}={shell_word(v)}" for k, v in plan.env.items()]
    log = shell_word(os.path.join(plan.run_dir, LOG_FILE))
    lines.append(f"exec {shell_command(_command(plan))} >> {log} 2>&1")
    return "\n".join(lines) + "\n"


def submit(plan: JobPlan, run_dir: Path) -> str:
    try:
        with open(run_dir / LOG_FILE, "ab") as log:
            proc = subprocess.Popen(
                _command(plan),
                env=job_env(plan),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=os.getcwd(),
            )
    except OSError as exc:
        raise BackendError(f"could not start the job wrapper: {exc}") from None
    return f"{proc.pid}:{_starttime(proc.pid)}"


def _alive(backend_id: str) -> int | None:
    pid_s, _, start = (backend_id or "").partition(":")
    if not pid_s.isdigit():
        return None
    pid = int(pid_s)
    with contextlib.suppress(ChildProcessError):  # reap our child (submit --follow): no lingering zombie
        os.waitpid(pid, os.WNOHANG)
    st = _starttime(pid)
    if st is None or st != start:
        return None
    with open(f"/proc/{pid}/stat") as f:
        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
            return None
    return pid


def _stat_fields(pid: str) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, pgrp, session, ... ([] when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _inherited_identity(pid: str) -> str | None:
    """The job wrapper identity (JOB_WRAPPER_ENV) in process `pid`'s environment; None if absent or unreadable."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return None
    prefix = f"{JOB_WRAPPER_ENV}=".encode()
    return next((e[len(prefix) :].decode(errors="replace") for e in env if e.startswith(prefix)), None)


def job_processes(backend_id: str) -> list[int]:
    """The live processes of this host that belong to the local job `backend_id` (`pid:start ticks` of its
    wrapper): its session (`start_new_session`) and whatever inherited the wrapper's identity (JOB_WRAPPER_ENV:
    torchrun starts each rank in a session of its own). A session whose leader's pid now names another process
    is someone else's: Linux does not hand out a pid that still names a live session."""
    pid_s = (backend_id or "").partition(":")[0]
    if not pid_s.isdigit():
        return []
    sid = pid_s
    leader = _stat_fields(sid)
    if leader and _starttime(int(sid)) != backend_id.partition(":")[2]:
        sid = ""  # the pid was reused: its session (if any) is not the job's
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        fields = _stat_fields(entry)
        if not fields or fields[0] == "Z":
            continue
        if fields[3] == sid or _inherited_identity(entry) == backend_id:
            found.append(int(entry))
    return found


def end_leftovers(backend_id: str, wait_s: float = 10.0) -> list[int]:
    """SIGKILL what is left of the job once its wrapper is gone (nothing while it runs); return the pids killed."""
    if _alive(backend_id):
        return []
    members = job_processes(backend_id)
    for member in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
    deadline = time.time() + wait_s
    while members and time.time() < deadline and set(members) & set(job_processes(backend_id)):
        time.sleep(0.05)
    return members


def status(record: dict) -> str:
    backend_id = record.get("backend_id", "")
    if _alive(backend_id):
        term = read_terminal_state(record["run_dir"])
        return term["state"] if term else "RUNNING"
    end_leftovers(backend_id)  # the wrapper is gone: none of its processes may run on
    term = read_terminal_state(record["run_dir"])
    if term:
        return term["state"]
    # gone without a terminal-state file: killed hard (SIGKILL, OOM, reboot)
    return "FAILED"


def logs(record: dict, follow: bool) -> None:
    print_log(record["run_dir"], follow, lambda: status(record))


def cancel(record: dict, grace_s: float = 30.0) -> None:
    pid = _alive(record.get("backend_id", ""))
    if pid is not None:
        os.kill(pid, signal.SIGTERM)  # the wrapper forwards it to the step, records CANCELLED and exits
        deadline = time.time() + grace_s
        while time.time() < deadline and _alive(record["backend_id"]):
            time.sleep(0.2)
        if _alive(record["backend_id"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _alive(record["backend_id"]):
                time.sleep(0.05)
    end_leftovers(record.get("backend_id", ""))  # its own session (start_new_session): the step's processes too

"""What `status` says about killed jobs, without a training run: the local backend ends every process a dead job
wrapper left (real processes), and the lines for a kill versus a cancel (docs/CONTRACTS.md "Faults")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from gemma3_launch.backends.local import end_leftovers, job_processes
from gemma3_launch.record import JOB_WRAPPER_ENV, process_start_ticks
from gemma3_launch.retry import BATCH_KILLED, CANCEL_REQUESTED, fault_lines

pytestmark = pytest.mark.unit

#: a stand-in job wrapper: sets its identity as the real one does, then starts one child in its session and one
#: in a session of its own (as torchrun starts ranks), prints their pids and waits
_WRAPPER = f"""
import os, subprocess, sys, time
ticks = open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]
os.environ["{JOB_WRAPPER_ENV}"] = f"{{os.getpid()}}:{{ticks}}"
same = subprocess.Popen(["sleep", "600"])
own = subprocess.Popen(["sleep", "600"], start_new_session=True)
print(same.pid, own.pid, flush=True)
time.sleep(600)
"""


def _runs(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_wrappers_processes_are_ended_even_outside_its_session():
    wrapper = subprocess.Popen(
        [sys.executable, "-c", _WRAPPER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    backend_id = f"{wrapper.pid}:{process_start_ticks(wrapper.pid)}"
    try:
        children = [int(p) for p in wrapper.stdout.readline().split()]
        assert end_leftovers(backend_id) == []  # the wrapper runs: nothing is touched
        assert all(_runs(p) for p in children)
        os.kill(wrapper.pid, signal.SIGKILL)
        wrapper.wait()
        # the one in its session, and the one that left it (found through its environment)
        assert sorted(job_processes(backend_id)) == sorted(children)
        assert sorted(end_leftovers(backend_id)) == sorted(children)
        deadline = time.time() + 10
        while any(_runs(p) for p in children) and time.time() < deadline:
            time.sleep(0.05)
        assert not any(_runs(p) for p in children)
    finally:  # whatever an assertion left running
        if wrapper.poll() is None:
            wrapper.kill()
        wrapper.wait()
        end_leftovers(backend_id)


def _rec(*states: str, **extra) -> dict:
    return {"job_id": "j", "states": [{"state": s} for s in states], **extra}


def test_kill_and_cancel_lines():
    killed = fault_lines(_rec("PENDING", "RUNNING"), "FAILED")
    assert any("job wrapper or batch step killed" in line for line in killed), killed
    batch = fault_lines({"job_id": "j", "states": [{"state": "FAILED", "reason": BATCH_KILLED}]}, "FAILED")
    assert any(f"cause: {BATCH_KILLED}" in line for line in batch), batch
    for cancelled in (
        fault_lines(_rec("PENDING", "RUNNING"), "CANCELLED"),  # scancel: the wrapper had no time to record it
        fault_lines(_rec("PENDING", "RUNNING", **{CANCEL_REQUESTED: "now"}), "FAILED"),  # asked through `cancel`
    ):
        assert not any("killed" in line for line in cancelled), cancelled
        assert any("gemma3-launch retry j" in line for line in cancelled), cancelled

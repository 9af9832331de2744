"""Subprocess helpers for tests: a module, so any test directory can import it (importing names from a conftest
resolves to whichever conftest pytest loaded first)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def pythonpath() -> str:
    """PYTHONPATH for a subprocess: the source tree first, then whatever the machine set (e.g. a --target install)."""
    parts = [str(REPO / "runtime"), str(REPO / "launcher"), str(REPO / "tests")]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_in_own_group(cmd: list[str], env: dict[str, str], cwd: str, timeout: float) -> subprocess.CompletedProcess:
    """Run `cmd` in a new session and, once it has exited, SIGKILL what is left of its process group: what a scheduler
    does to a job's processes. A SIGKILLed trainer leaves megatron's checkpoint-writer helpers (a multiprocessing
    manager) orphaned, holding the output pipes open; `subprocess.run` would wait on them forever."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            cmd, code, out.read().decode(errors="replace"), err.read().decode(errors="replace")
        )

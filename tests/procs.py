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


#: exit code of the shell script when mounting the small file system failed
_MOUNT_FAILED = 90


def run_on_small_tmpfs(mnt: Path, size: str, script: str, env: dict[str, str], timeout: float):
    """Run the shell `script` with a size-limited tmpfs (`size`, e.g. "4m") mounted on `mnt`, in a private mount
    namespace (`unshare`: as root, else through a user namespace), so writes there really fail with ENOSPC. The mount
    ends with the script. Returns the CompletedProcess; raises RuntimeError with the reason when the file system
    cannot be built (the disk-full tests then FAIL, naming it)."""
    import shlex
    import shutil

    unshare = shutil.which("unshare")
    if unshare is None:
        raise RuntimeError("a size-limited tmpfs needs util-linux `unshare` (not installed)")
    mnt.mkdir(parents=True, exist_ok=True)
    mount = f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(mnt))} || exit {_MOUNT_FAILED}\n"
    flags = ["--mount"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--mount"]
    res = run_in_own_group([unshare, *flags, "sh", "-c", mount + script], env, str(mnt.parent), timeout)
    if res.returncode == _MOUNT_FAILED or res.stderr.startswith("unshare:"):
        raise RuntimeError(f"could not mount a {size} tmpfs on {mnt}: {res.stderr.strip()[-300:]}")
    return res

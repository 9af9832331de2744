"""Helpers of the SLURM tier (its fixture is in conftest.py): a REAL Slurm cluster (2 emulated nodes, fake pyxis,
slurmdbd) started ONCE per test session by the project's harness (scripts/slurm_testbed/up.sh) and stopped at the
end (down.sh, by PID files).

Jobs run the repository's .venv as "the container" (the fake pyxis plugin accepts --container-image/-mounts and
runs no container), reached through PATH in the submitting environment (sbatch --export=ALL).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "scripts" / "slurm_testbed"
SPECS = Path(__file__).resolve().parent / "specs"
#: short, so "finished longer ago than MinJobAge" happens within the session
MIN_JOB_AGE = 5
SENTINEL = "hf_SENTINELsentinelSENTINELslurm0001"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY"}


def missing_resource() -> str | None:
    if os.geteuid() != 0:
        return "the SLURM tier needs root (it installs and starts slurmctld/slurmd/munge/slurmdbd)"
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        return "the SLURM tier needs Debian's slurm packages or apt-get to install them"
    if not (REPO.parent / "shared" / "testbeds" / "slurm" / "fake_pyxis.c").exists() and not os.environ.get(
        "FAKE_PYXIS_C"
    ):
        return "the SLURM tier needs ../shared/testbeds/slurm/fake_pyxis.c (or FAKE_PYXIS_C)"
    return None


def start_cluster(with_dbd: bool) -> None:
    env = dict(os.environ, WITH_DBD="1" if with_dbd else "0", MIN_JOB_AGE=str(MIN_JOB_AGE))
    res = subprocess.run(["bash", str(HARNESS / "up.sh")], env=env, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"slurm_testbed/up.sh failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


class Cluster:
    """The submitting side: runs the real `gemma3-launch` CLI in a subprocess with the session's environment."""

    def __init__(self, root: Path):
        self.root = root
        self.env = dict(
            os.environ,
            SLURM_TEST_DIR=str(root),
            XDG_STATE_HOME=str(root / "state"),
            PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            HF_TOKEN=SENTINEL,
            PYTHONPATH=f"{REPO / 'launcher'}:{REPO / 'runtime'}",
        )

    def launch(self, *args: str, tag: str = "x", timeout: float = 600) -> subprocess.CompletedProcess:
        env = dict(self.env, RUN_TAG=tag)
        return subprocess.run(
            [sys.executable, "-m", "gemma3_launch.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )

    def submit(self, spec: str, *sets: str, tag: str = "x", follow: bool = False) -> dict:
        args = ["submit", str(SPECS / spec), "--cluster", "slurm"]
        for s in sets:
            args += ["--set", s]
        if follow:
            args.append("--follow")
        res = self.launch(*args, tag=tag, timeout=900)
        line = next((l for l in res.stdout.splitlines() if l.startswith("submitted ")), None)
        assert line, f"submit failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"
        job_id = line.split()[1]
        run_dir = Path(line.split("run dir ", 1)[1])
        return {
            "job_id": job_id,
            "run_dir": run_dir,
            "rc": res.returncode,
            "stdout": res.stdout,
            "stderr": res.stderr,
            "slurm_id": json.loads((run_dir / "job.json").read_text())["backend_id"],
            "tag": tag,
        }

    def status(self, job_id: str) -> str:
        res = self.launch("status", job_id)
        assert res.returncode == 0, res.stderr
        return res.stdout.split()[1]

    def wait(self, job_id: str, states: set[str] = TERMINAL, timeout: float = 400) -> str:
        deadline = time.time() + timeout
        delay = 1.0
        while time.time() < deadline:
            state = self.status(job_id)
            if state in states:
                return state
            time.sleep(delay)
            delay = min(delay * 1.3, 5)
        raise AssertionError(f"{job_id}: still {state} after {timeout:.0f}s")

    def record(self, job: dict) -> dict:
        return json.loads((job["run_dir"] / "job.json").read_text())

    def wait_log(self, job: dict, needle: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        log = job["run_dir"] / "job.log"
        while time.time() < deadline:
            if log.exists() and needle in log.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} not in {log} after {timeout:.0f}s")

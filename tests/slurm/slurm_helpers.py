"""Helpers of the SLURM tier (its fixture is in conftest.py): a REAL Slurm cluster (2 emulated nodes, the project's
fake pyxis, slurmdbd) started ONCE per test session by the project's harness (scripts/slurm_testbed/up.sh) and
stopped at the end (down.sh, by PID files).

Jobs name an image stand-in as `container.image` (scripts/slurm_testbed/make_image.sh: a second Python environment
with a non-editable install of this checkout); the fake pyxis "imports" it by putting its bin/ first on the task's
PATH and records every task it starts (FAKE_PYXIS_LOG). The submitting environment is never on the job's PATH.
"""

from __future__ import annotations

import json
import os
import shlex
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
#: set in the submitting (login) environment only: it must never reach a job.
LOGIN_SENTINEL = "GEMMA3_TEST_LOGIN_ONLY"
FAKE_PYXIS_LOG = Path("/var/log/slurm/fake_pyxis.tasks")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY"}


def missing_resource() -> str | None:
    """Why the tier cannot run here (it then FAILS with this line), or None."""
    if os.geteuid() != 0:
        return "the SLURM tier needs root (it installs and starts slurmctld/slurmd/munge/slurmdbd)"
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        return "the SLURM tier needs Debian's slurm packages or apt-get to install them"
    if not shutil.which("gcc") and not shutil.which("apt-get"):
        return "the SLURM tier needs gcc to build its fake pyxis plugin (scripts/slurm_testbed/fake_pyxis.c)"
    return None


def build_image(dest: Path) -> Path:
    """The image stand-in jobs name as container.image (built from this checkout with the session's Python)."""
    res = subprocess.run(
        ["bash", str(HARNESS / "make_image.sh"), str(dest), sys.executable], capture_output=True, text=True, timeout=600
    )
    if res.returncode != 0:
        raise RuntimeError(f"slurm_testbed/make_image.sh failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return dest


def pyxis_tasks(slurm_id: str) -> list[dict]:
    """The tasks the fake pyxis started for one SLURM job: step, container name, image, workdir, mounts, argv."""
    tasks = []
    for line in FAKE_PYXIS_LOG.read_text(encoding="utf-8").splitlines():
        job, step, name, image, workdir, mounts, argv = line.split("\t", 6)
        if job == slurm_id:
            tasks.append(
                {
                    "step": step,
                    "name": name,
                    "image": image,
                    "workdir": workdir,
                    "mounts": mounts,
                    "argv": argv.split("\x1f"),
                }
            )
    return tasks


def wait_forgotten(slurm_id: str, timeout: float = 150) -> None:
    """Until squeue and scontrol no longer know the job (it ended longer ago than MinJobAge); asks nothing else."""
    from gemma3_launch.backends.slurm import scheduler_state

    deadline = time.time() + timeout
    while scheduler_state(slurm_id) is not None:
        assert time.time() < deadline, (
            f"slurmctld still knows job {slurm_id} after {timeout}s (MinJobAge={MIN_JOB_AGE})"
        )
        time.sleep(2)


def batch_script_pids(slurm_id: str) -> list[int]:
    """The processes running SLURM job `slurm_id`'s batch script (slurmd keeps it as .../job<id>/slurm_script)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"SLURM_JOB_ID={slurm_id}".encode() in env and any(a.endswith(b"slurm_script") for a in argv):
            found.append(int(entry))
    return found


def start_cluster(with_dbd: bool) -> None:
    env = dict(os.environ, WITH_DBD="1" if with_dbd else "0", MIN_JOB_AGE=str(MIN_JOB_AGE))
    res = subprocess.run(["bash", str(HARNESS / "up.sh")], env=env, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"slurm_testbed/up.sh failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


class Cluster:
    """The submitting side: runs the real `gemma3-launch` CLI in a subprocess with the session's environment."""

    def __init__(self, root: Path, image: Path):
        self.root = root
        self.image = image
        self.env = dict(
            os.environ,
            SLURM_TEST_DIR=str(root),
            SLURM_IMAGE=str(image),
            XDG_STATE_HOME=str(root / "state"),
            PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            HF_TOKEN=SENTINEL,
            PYTHONPATH=f"{REPO / 'launcher'}:{REPO / 'runtime'}",
            **{LOGIN_SENTINEL: "login-environment-only"},
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
        line = next((text for text in res.stdout.splitlines() if text.startswith("submitted ")), None)
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


def _rendered_steps(script: str) -> list[tuple[list[str], list[str]]]:
    """(step command, node command) per step, from the comment block `render` prints (one shell line each)."""
    lines = script.splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith("#   ") and line.rstrip().endswith(":") and line[4:5].isdigit():
            step_cmd, node_cmd = (shlex.split(lines[i + k].removeprefix("#     ")) for k in (1, 2))
            found.append((step_cmd, node_cmd))
    return found


def assert_render_is_what_ran(job: dict) -> None:
    """`render` of the job's own plan is the file submitit submitted (byte for byte, and valid bash); the batch line,
    every step's srun line and every node's command that executed are the rendered ones (the container name, the one
    run-time value, being gemma3-<SLURM job id>-<attempt>); the fake pyxis saw the same argv in the container."""
    from gemma3_launch.backends import slurm as slurm_backend
    from gemma3_launch.plan import CONTAINER_NAME_ARG, JobPlan

    run_dir, slurm_id = job["run_dir"], job["slurm_id"]
    plan = JobPlan.from_dict(json.loads((run_dir / "plan.json").read_text()))
    submitted = (run_dir / "submitit" / f"{slurm_id}_submission.sh").read_text()
    assert slurm_backend.render(plan) == submitted == (run_dir / "sbatch.sh").read_text()
    assert subprocess.run(["bash", "-n"], input=submitted, text=True).returncode == 0
    batch_line = shlex.split(submitted.rstrip("\n").splitlines()[-1])
    folder = str(run_dir / "submitit")
    assert batch_line == [*plan.wrapper_command, "-u", "-m", "submitit.core._submit", folder]

    rendered = _rendered_steps(submitted)
    assert [tuple(step) for step, _ in rendered] == [s.command for s in plan.steps]
    assert [tuple(node) for _, node in rendered] == [s.node_command for s in plan.steps]
    executed = [json.loads(line) for line in (run_dir / "commands.jsonl").read_text().splitlines()]
    assert executed, "the wrappers recorded no command"
    by_name = {s.name: i for i, s in enumerate(plan.steps)}
    tasks = pyxis_tasks(slurm_id)
    for entry in executed:
        name = f"gemma3-{slurm_id}-{entry['attempt']}"
        if entry["level"] == "job":
            step_cmd = rendered[by_name[entry["step"]]][0]
            assert entry["argv"] == [f"--container-name={name}" if a == CONTAINER_NAME_ARG else a for a in step_cmd]
        else:
            assert entry["argv"] == rendered[by_name[entry["step"]]][1]
    # what ran in the container: the batch-level wrapper (step 0) and the steps' node wrappers, all one container
    for task in tasks:
        assert task["image"] == plan.image
        assert task["argv"][0] == "python3"
    wrapper_tasks = [t for t in tasks if t["argv"][1:4] == ["-u", "-m", "submitit.core._submit"]]
    assert wrapper_tasks and all(t["argv"] == batch_line[len(plan.wrapper_command) - 1 :] for t in wrapper_tasks)
    node_tails = {tuple(step[step.index("python3") :]) for step, _ in rendered}
    assert all(tuple(t["argv"]) in node_tails for t in tasks if t not in wrapper_tasks)

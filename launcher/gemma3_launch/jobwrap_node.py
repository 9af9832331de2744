"""The job wrapper's node and rank levels (`python -m gemma3_launch.jobwrap node|rank ...`). Torch-free.

`node` runs one node of one step (an srun task / a local child): it starts the step's node command (the runtime, or
torchrun reading its rendezvous from PET_NODE_RANK / PET_MASTER_ADDR / PET_MASTER_PORT, which it sets), forwards
preemption signals to the torchrun WORKERS - torchrun itself is started with SIGUSR2 ignored, because it would die on
it - and turns "the workers saved and asked for a requeue" back into exit 199 (torchrun reports any worker failure as
1). `rank` wraps one torchrun worker so the node can know its workers' exit codes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .contract import REQUEUE_EXIT_CODE, RESULT_FILE_ENV
from .jobwrap_io import (
    RANK_EXIT_DIR_ENV,
    asked_for_requeue,
    attempt_number,
    die_with_parent,
    exit_dir,
    load_plan,
    log_command,
    rank_records,
    result_file,
)
from .operator_env import single_process_env
from .plan import CONTAINER_NAME_ENV, JobPlan, Step
from .record import PLAN_FILE, now, update_record, write_json_atomic

FORWARDED_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
#: packages whose versions the job records (what it actually ran with; absent ones are skipped).
RECORDED_PACKAGES = ("gemma3-launch", "torch", "megatron-core", "transformers", "safetensors", "peft", "numpy")


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in RECORDED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc: no psutil in the launcher)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        pass
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                    kids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return kids


def _node_rank() -> str:
    for var in ("SLURM_NODEID", "GEMMA3_NODE_RANK", "NODE_RANK", "PET_NODE_RANK"):
        if os.environ.get(var, "") != "":
            return os.environ[var]
    return "0"


def node_env(plan: JobPlan, step: Step, run_dir: Path, rank: str) -> dict[str, str]:
    """The node command's environment: ours, plus the documented run-time values it reads - torchrun's rendezvous
    (RENDEZVOUS_ENV: node rank, master address and port) and where rank 0 writes the step's result.json."""
    env = dict(os.environ)
    if step.world_size == 1:  # the operator's RANK/WORLD_SIZE/PET_* describe the pod, not this one-process step
        env = single_process_env(env)
    env[RANK_EXIT_DIR_ENV] = str(exit_dir(run_dir, step))
    env[RESULT_FILE_ENV] = str(result_file(run_dir, step, attempt_number()))
    if step.world_size > 1:  # an operator's own PET_* (Kubeflow Trainer v2) stand; SLURM / local get them here
        addr = os.environ.get("PET_MASTER_ADDR") or os.environ.get("MASTER_ADDR") or "127.0.0.1"
        port = (
            os.environ.get("PET_MASTER_PORT") or os.environ.get("MASTER_PORT") or str(plan.slurm.master_port or 29500)
        )
        env.update(PET_NODE_RANK=rank, PET_MASTER_ADDR=addr, PET_MASTER_PORT=port)
    return env


def _become_subreaper() -> None:
    """Workers orphaned by a killed torchrun re-parent to this wrapper (Linux PR_SET_CHILD_SUBREAPER), so it can
    stop them: a retry must not train next to the previous try's survivors."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # 36 = PR_SET_CHILD_SUBREAPER


def _kill_orphans(grace_s: float = 30.0) -> None:
    """SIGKILL what the failed node command left behind (workers of a killed torchrun) until none is left, reaping
    them (polled: an orphan may reach this wrapper a moment after torchrun's exit was reported)."""
    start = time.monotonic()
    while time.monotonic() < start + grace_s:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        kids = _children(os.getpid())
        if not kids and time.monotonic() > start + 1.0:
            return
        for pid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def run_node(run_dir: Path, index: int) -> int:
    plan = load_plan(run_dir)
    if plan is None or not 0 <= index < len(plan.steps):
        print(f"jobwrap: {run_dir / PLAN_FILE}: expected the job's plan with a step {index}", file=sys.stderr)
        return 2
    step = plan.steps[index]
    rank = _node_rank()
    if rank == "0":
        _record_runtime_facts(run_dir)
    exit_dir(run_dir, step).mkdir(parents=True, exist_ok=True)
    env = node_env(plan, step, run_dir, rank)
    _become_subreaper()
    if not os.environ.get("SLURM_JOB_ID"):
        die_with_parent()  # local / k8s: the job wrapper is our parent (under SLURM it is slurmstepd)
    log_command(run_dir, "node", step, step.node_command)

    def ignore_usr2() -> None:  # inherited through exec: torchrun never dies of USR2; workers install their handler
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        die_with_parent()  # torchrun dies with this wrapper

    try:
        proc = subprocess.Popen(list(step.node_command), env=env, preexec_fn=ignore_usr2)
    except OSError as exc:
        print(f"jobwrap: step {step.name}: cannot start {step.node_command[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        targets = [proc.pid] if step.world_size == 1 else _children(proc.pid)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    rc = proc.wait()
    if rc != 0:
        _kill_orphans()
    if rc != 0 and step.world_size > 1:
        exits = [c["exit_code"] for c in rank_records(exit_dir(run_dir, step)) if str(c.get("node_rank")) == rank]
        if asked_for_requeue(exits):
            rc = REQUEUE_EXIT_CODE
    return 128 - rc if rc < 0 else rc  # a signal death as a shell reports it (SIGKILL: 137), not 256 - N


def _record_runtime_facts(run_dir: Path) -> None:
    facts = {
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "python_prefix": sys.prefix,
        # names only (never values): which variables reached the container (the allowlist at work)
        "env_names": sorted(os.environ),
        "path": os.environ.get("PATH", ""),
        "container_name": os.environ.get("FAKE_PYXIS_NAME") or os.environ.get(CONTAINER_NAME_ENV),
        "image": os.environ.get("GEMMA3_IMAGE") or os.environ.get("GEMMA3_LAUNCH_IMAGE"),
        "image_source": "GEMMA3_IMAGE (set in the image)" if os.environ.get("GEMMA3_IMAGE") else "requested",
        "container_image_flag": os.environ.get("FAKE_PYXIS_IMAGE") or os.environ.get("SLURM_CONTAINER_IMAGE"),
        "versions": _versions(),
        "recorded_at": now(),
    }
    update_record(run_dir, lambda rec: rec.__setitem__("runtime", facts))


def run_rank(argv: list[str]) -> int:
    import runpy
    import traceback

    die_with_parent()  # a killed torchrun takes its workers along
    module, args = argv[0], argv[1:]
    sys.argv = [module, *args]
    code: int = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a worker crash is recorded, then re-raised as exit 1
        traceback.print_exc()
        code = 1
    finally:
        out = os.environ.get(RANK_EXIT_DIR_ENV)
        if out:
            write_json_atomic(
                Path(out) / f"rank-{os.environ.get('RANK', '0')}.json",
                {
                    "rank": os.environ.get("RANK"),
                    "local_rank": os.environ.get("LOCAL_RANK"),
                    "world_size": os.environ.get("WORLD_SIZE"),
                    "node_rank": os.environ.get("GROUP_RANK", _node_rank()),
                    "master_addr": os.environ.get("MASTER_ADDR"),
                    "master_port": os.environ.get("MASTER_PORT"),
                    "host": socket.gethostname(),
                    "slurm_nodename": os.environ.get("SLURMD_NODENAME"),
                    "exit_code": code,
                },
            )
    return code

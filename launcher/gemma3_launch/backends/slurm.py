"""SLURM backend: our own sbatch script (rendered from the plan) submitted with `sbatch --parsable`.

Why not submitit's executor: `render` must print the exact script BEFORE submitting (submitit writes it only at
submit time), submitit pickles a Python callable whose result/status path leans on sacct (its known pain point:
state UNKNOWN without accounting), and the batch step must `exec` our job wrapper so `--signal=B:USR2@LEAD` reaches
it. What we keep from submitit's design: signal -> checkpoint -> explicit `scontrol requeue`.

Layout of a job: the batch script exports the plan's env and the rendezvous (MASTER_ADDR = first host of
`scontrol show hostnames`), then execs `jobwrap job`, which runs each step with `srun` (one task per node, pyxis
`--container-image/--container-mounts`), each task running `jobwrap node` -> torchrun with node rank SLURM_NODEID.
Status: squeue, then scontrol (until MinJobAge), then the job's own terminal-state file, then sacct if present.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from ..plan import JobPlan
from ..record import LOG_FILE, TERMINAL_STATES, read_record, read_terminal_state
from . import BackendError
from ._follow import print_log

#: SLURM job states that mean "not finished" (squeue/scontrol spelling).
_ACTIVE = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
    "RESV_DEL_HOLD",
    "SPECIAL_EXIT",
}


def job_python() -> str:
    """Python that runs the batch-level wrapper on the first node: the launcher's own (a shared-FS install)."""
    return os.environ.get("GEMMA3_JOB_PYTHON", sys.executable)


def render(plan: JobPlan) -> str:
    r, s = plan.resources, plan.slurm
    log = os.path.join(plan.run_dir, LOG_FILE)
    opts = [
        f"--job-name={plan.job_id}",
        f"--nodes={r.nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={r.cpus_per_task}",
        f"--time={r.time_limit}",
        f"--output={log}",
        f"--error={log}",
        "--open-mode=append",  # a requeued run appends to the same log
        f"--signal=B:USR2@{s.signal_lead_s}",  # to the batch step (our wrapper), which forwards it to the workers
        "--requeue",
        f"--chdir={os.getcwd()}",
        "--export=ALL",  # secrets reach the job from the submitting environment, never through this file
    ]
    if r.gpus_per_node:
        opts.append(f"--gpus-per-node={r.gpus_per_node}")
    if r.memory:
        opts.append(f"--mem={r.memory}")
    for flag, value in (
        ("partition", s.partition),
        ("account", s.account),
        ("qos", s.qos),
        ("constraint", s.constraint),
    ):
        if value:
            opts.append(f"--{flag}={value}")
    if s.exclusive:
        opts.append("--exclusive")
    opts += list(s.extra_sbatch)
    lines = [
        "#!/bin/bash",
        f"# gemma3-launch {plan.kind} job {plan.job_id} (spec {plan.spec_hash}); run dir {plan.run_dir}",
    ]
    lines += [f"#SBATCH {o}" for o in opts]
    lines.append("# Steps, run in order by the job wrapper (srun, one task per node; torchrun when >1 process):")
    for i, step in enumerate(plan.steps, 1):
        argv = step.launch_argv(node_rank="$SLURM_NODEID", master_addr="$MASTER_ADDR", master_port="$MASTER_PORT")
        lines.append(f"#   {i}. {step.name} [{step.nnodes} node(s) x {step.nproc_per_node}]: {shlex.join(argv)}")
    if plan.secrets:
        lines.append(f"# secrets (by name, from the submitting environment): {', '.join(plan.secrets)}")
    lines.append("set -euo pipefail")
    lines += [f"export {k}={shlex.quote(v)}" for k, v in plan.env.items()]
    lines += [
        'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f"export MASTER_PORT={s.master_port}"
        if s.master_port
        else "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
        f"exec {shlex.quote(job_python())} -m gemma3_launch.jobwrap job {shlex.quote(plan.run_dir)}",
    ]
    return "\n".join(lines) + "\n"


def _run(cmd: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise BackendError(f"{cmd[0]}: not found (is this a SLURM login node?)") from None
    except subprocess.TimeoutExpired:
        raise BackendError(f"{cmd[0]}: no answer within {timeout:.0f}s") from None
    if check and res.returncode != 0:
        raise BackendError(f"{' '.join(cmd[:2])} failed: {' '.join(res.stderr.split()) or res.returncode}")
    return res


def submit(plan: JobPlan, run_dir: Path) -> str:
    script = run_dir / "sbatch.sh"
    script.write_text(render(plan), encoding="utf-8")
    res = _run(["sbatch", "--parsable", str(script)])
    job_id = res.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise BackendError(f"sbatch: unexpected answer {res.stdout.strip()!r}")
    return job_id


def scheduler_state(job_id: str) -> str | None:
    """squeue, then scontrol; None when the controller no longer knows the job (MinJobAge passed)."""
    res = _run(["squeue", "-h", "-j", job_id, "-o", "%T"], check=False)
    state = res.stdout.strip().split("\n")[0].strip() if res.returncode == 0 else ""
    if state:
        return state
    res = _run(["scontrol", "show", "job", "-o", job_id], check=False)
    if res.returncode == 0:
        for field in res.stdout.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
    return None


def accounting_state(job_id: str) -> str | None:
    res = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], check=False)
    if res.returncode != 0 or not res.stdout.strip():
        return None  # "accounting storage is disabled" or unknown id
    return res.stdout.strip().split("\n")[-1].split()[0]  # "CANCELLED by 0" -> CANCELLED


def status(record: dict) -> str:
    job_id = str(record.get("backend_id") or "")
    if not job_id:
        return "UNKNOWN"
    state = scheduler_state(job_id)
    if state:
        return state
    term = read_terminal_state(record["run_dir"])
    if term:
        return term["state"]
    acct = accounting_state(job_id)
    if acct:
        return acct
    latest = read_record(record["run_dir"]) or {}
    return latest["state"] if latest.get("state") in TERMINAL_STATES else "UNKNOWN"  # last state the job recorded


def logs(record: dict, follow: bool) -> None:
    print_log(record["run_dir"], follow, lambda: status(record))


def cancel(record: dict) -> None:
    job_id = str(record.get("backend_id") or "")
    if not job_id:
        raise BackendError("job has no SLURM job id (was it submitted?)")
    _run(["scancel", job_id])

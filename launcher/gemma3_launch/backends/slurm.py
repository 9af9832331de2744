"""SLURM backend: the job is created through submitit's SlurmExecutor (`submit()`), and `render` prints the exact
script it submits (submitit's own builder, `_make_sbatch_string`, fed the same parameters; a test equates the two).

Layout of a job. The batch script (submitit's) exports the plan's env, the rendezvous (MASTER_ADDR = first host of
`scontrol show hostnames`, MASTER_PORT) and the container name (`gemma3-<job id>-<restart count>`: one per job and
attempt), then runs the plan's `wrapper_command`: `srun --overlap ... --container-image=IMAGE python3` with
`-u -m submitit.core._submit FOLDER` appended by submitit, i.e. the job wrapper (`jobwrap.submitit_job`) runs INSIDE
the container with the image's Python. It executes each step's srun line from the plan (same image, same container
name, so pyxis imports the image once per attempt), each task running `jobwrap node` -> the step's node command.
Nothing of the login node's Python environment is named: sbatch gets `--export=<secret names>` (or NONE) and every
srun `--export=<allowlist>` (the plan's env, the secrets, MASTER_ADDR/PORT, the container name).

Where submitit's API does not fit, we stay minimal (docs/CONTRACTS.md): `use_srun=False` with the executor's
`python` set to our srun line (submitit would quote an env reference in `srun_args`, and the container name must
come from the batch environment); the signal is submitit's `USR2@<lead>` to every step; requeue is ours
(`scontrol requeue` from the wrapper after the checkpoint is committed), not submitit's checkpoint pickling.
Status: squeue, then scontrol (until MinJobAge), then the job's own terminal-state file, then sacct if present.
A job whose batch script died of SIGKILL (the job's ExitCode `0:9`) and that nobody cancelled through `cancel`
reads FAILED, "batch step killed", not the CANCELLED SLURM may record (docs/CONTRACTS.md "Faults").
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ..plan import CONTAINER_NAME_ARG, CONTAINER_NAME_ENV, JobPlan
from ..quoting import comment_text, shell_command, shell_word, submitit_sbatch_value
from ..record import (
    BATCH_KILLED,
    CANCEL_REQUESTED,
    LOG_FILE,
    TERMINAL_STATES,
    add_state,
    read_record,
    read_terminal_state,
    update_record,
    write_terminal_state,
)
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
#: submitit's job-side entry (what its executor appends to `python`).
SUBMITIT_ENTRY = "-u -m submitit.core._submit"
#: the batch script's name for the container of this attempt (the plan's srun lines reference it).
CONTAINER_NAME_VALUE = '"gemma3-${SLURM_JOB_ID}-${SLURM_RESTART_COUNT:-0}"'


def submitit_folder(plan: JobPlan) -> Path:
    """Where submitit keeps the submission file and the pickled call: inside the run dir (shared with the nodes)."""
    return Path(plan.run_dir).absolute() / "submitit"


def wrapper_shell(plan: JobPlan) -> str:
    """The plan's wrapper command as shell text, the container name left for the batch shell to expand."""
    head, _, tail = _split_at_ref(plan.wrapper_command)
    return " ".join(filter(None, [shell_command(head), f'"{CONTAINER_NAME_ARG}"' if _ else "", shell_command(tail)]))


def _split_at_ref(argv: tuple[str, ...]) -> tuple[tuple[str, ...], bool, tuple[str, ...]]:
    if CONTAINER_NAME_ARG not in argv:
        return argv, False, ()
    i = argv.index(CONTAINER_NAME_ARG)
    return argv[:i], True, argv[i + 1 :]


def _setup_lines(plan: JobPlan) -> list[str]:
    """Lines the batch script runs before the job wrapper: what it will run (comments), env, rendezvous, names."""
    lines = [
        f"# gemma3-launch {plan.kind} job {plan.job_id} (spec {plan.spec_hash}); run dir {comment_text(plan.run_dir)}",
        "# Steps, run in order by the job wrapper inside the container (STEP COMMAND, then each node's command):",
    ]
    for i, step in enumerate(plan.steps, 1):
        lines.append(f"#   {i}. {step.name} [{step.nnodes} node(s) x {step.nproc_per_node}]:")
        lines.append(f"#     {comment_text(shell_command(step.command))}")
        lines.append(f"#     {comment_text(shell_command(step.node_command))}")
    if plan.secrets:
        lines.append(f"# secrets (by name, from the submitting environment): {comment_text(', '.join(plan.secrets))}")
    lines.append("set -euo pipefail")
    lines += [f"export {k}={shell_word(v)}" for k, v in plan.env.items()]
    port = str(plan.slurm.master_port) if plan.slurm.master_port else "$((20000 + SLURM_JOB_ID % 20000))"
    lines += [
        'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f"export MASTER_PORT={port}",
        f"export {CONTAINER_NAME_ENV}={CONTAINER_NAME_VALUE}",
    ]
    return lines


def _extra_parameters(extra: tuple[str, ...]) -> dict[str, object]:
    """`slurm.extra_sbatch` entries (`--opt=value` / `--flag`) as submitit `additional_parameters`."""
    out: dict[str, object] = {}
    for item in extra:
        key, eq, value = submitit_sbatch_value(item).lstrip("-").partition("=")
        out[key] = value if eq else True
    return out


def executor_parameters(plan: JobPlan) -> dict[str, object]:
    """The submitit SlurmExecutor parameters for `plan` (`update_parameters` keywords)."""
    r, s = plan.resources, plan.slurm
    params: dict[str, object] = {
        "job_name": plan.job_id,
        "time": r.time_limit,
        "nodes": r.nodes,
        "ntasks_per_node": 1,
        "cpus_per_task": r.cpus_per_task,
        "signal_delay_s": s.signal_lead_s,
        "stderr_to_stdout": True,
        "use_srun": False,  # the plan's wrapper_command is the srun line (see the module docstring)
        "wckey": None,
        "setup": _setup_lines(plan),
    }
    if r.gpus_per_node:
        params["gpus_per_node"] = r.gpus_per_node
    if r.memory:
        params["mem"] = r.memory
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(s, key):
            params[key] = submitit_sbatch_value(getattr(s, key))
    if s.exclusive:
        params["exclusive"] = True
    additional: dict[str, object] = {
        "output": submitit_sbatch_value(str(Path(plan.run_dir).absolute() / LOG_FILE), filename=True),
        "requeue": True,
        "export": ",".join(plan.secrets) or "NONE",  # secrets by name; nothing else of the login environment
    }
    additional.update(_extra_parameters(s.extra_sbatch))
    params["additional_parameters"] = additional
    return params


def render(plan: JobPlan) -> str:
    """Exactly the text submitit submits for `plan` (its `_make_sbatch_string`, as its executor calls it)."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = submitit_folder(plan)
    command = f"{wrapper_shell(plan)} {SUBMITIT_ENTRY} {shell_word(str(folder))}"
    return _make_sbatch_string(command=command, folder=folder, **executor_parameters(plan))


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
    """Create the job through submitit's executor; the batch script is also kept as run_dir/sbatch.sh."""
    import submitit

    from ..jobwrap import submitit_job

    try:
        executor = submitit.SlurmExecutor(folder=submitit_folder(plan), python=wrapper_shell(plan), max_num_timeout=0)
        executor.update_parameters(**executor_parameters(plan))
        job = executor.submit(submitit_job, str(Path(plan.run_dir).absolute()))
    except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as exc:
        raise BackendError(f"submitit: {' '.join(str(exc).split())[:400]}") from None
    (run_dir / "sbatch.sh").write_text(job.paths.submission_file.read_text(encoding="utf-8"), encoding="utf-8")
    return str(job.job_id)


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


def exit_signal(job_id: str) -> int | None:
    """The signal that ended the job's batch script (the N of its ExitCode `code:N`; scontrol, else sacct); None
    when neither knows the job or it ended without a signal."""
    res = _run(["scontrol", "show", "job", "-o", job_id], check=False)
    fields = [f for f in res.stdout.split() if f.startswith("ExitCode=")] if res.returncode == 0 else []
    code = fields[0].split("=", 1)[1] if fields else ""
    if not code:
        res = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "ExitCode"], check=False)
        code = res.stdout.strip().split("\n")[-1].strip() if res.returncode == 0 else ""
    sig = code.partition(":")[2]
    return int(sig) if sig.isdigit() and int(sig) else None


def _batch_killed(record: dict, job_id: str, state: str) -> bool:
    """The batch script was SIGKILLed (not scancel's SIGTERM) while the job ran, and no `cancel` asked for it. SLURM
    then terminates the job's other steps: the job wrapper sees that SIGTERM and may record CANCELLED itself, so
    neither the scheduler's state nor the job's own verdict can tell this from a cancel; the exit signal can."""
    if state not in ("CANCELLED", "FAILED"):
        return False
    latest = read_record(record["run_dir"]) or record
    if latest.get(CANCEL_REQUESTED) or not latest.get("attempts"):
        return False
    return exit_signal(job_id) == 9


def status(record: dict) -> str:
    job_id = str(record.get("backend_id") or "")
    if not job_id:
        return "UNKNOWN"
    term = read_terminal_state(record["run_dir"])
    if term and term.get("reason") == BATCH_KILLED and term.get("slurm_job_id") == job_id:
        return term["state"]  # decided before (below) for this job id: stays so after the controller forgets it
    state = scheduler_state(job_id) or (term or {}).get("state") or accounting_state(job_id)
    if not state:
        latest = read_record(record["run_dir"]) or {}
        return latest["state"] if latest.get("state") in TERMINAL_STATES else "UNKNOWN"  # the job's last own state
    if state not in _ACTIVE and _batch_killed(record, job_id, state):
        write_terminal_state(record["run_dir"], "FAILED", 128 + 9, reason=BATCH_KILLED, slurm_job_id=job_id)
        update_record(record["run_dir"], lambda r: add_state(r, "FAILED", source="status", reason=BATCH_KILLED))
        return "FAILED"
    return state


def logs(record: dict, follow: bool) -> None:
    print_log(record["run_dir"], follow, lambda: status(record))


def cancel(record: dict) -> None:
    job_id = str(record.get("backend_id") or "")
    if not job_id:
        raise BackendError("job has no SLURM job id (was it submitted?)")
    _run(["scancel", job_id])

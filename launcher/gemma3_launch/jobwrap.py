"""The job wrapper: runs INSIDE the job on every backend. Torch-free (the image's Python runs it before torch loads).

    python -m gemma3_launch.jobwrap job  RUN_DIR          run the plan's steps in order (local process / sbatch script)
    python -m gemma3_launch.jobwrap node RUN_DIR STEP     one node of one step (srun task / local child)
    python -m gemma3_launch.jobwrap rank MODULE ARGS...   one torchrun worker: records its own exit code

Why three levels. `job` (this module) owns the record: it writes facts only the job knows into job.json, skips steps
already done (after a requeue or `retry`), retries a training step whose worker or torchrun was killed inside the
allocation (resources.max_step_retries times; it resumes from its last committed checkpoint), writes the
terminal-state file (status must not depend on the scheduler remembering the job), and on REQUEUE_EXIT_CODE under
SLURM calls `scontrol requeue` itself (site RequeueExit settings do not matter). `node` and `rank` (jobwrap_node)
forward preemption signals to the workers and record each worker's exit code.

The wrapper builds no command: `job` executes each step's `Step.command` from plan.json (on SLURM the srun line, with
the container name - unique per job and attempt - substituted in its one argv element), `node` executes
`Step.node_command`. Both append what they executed to commands.jsonl. After a step, `job` reads the runtime's
result.json (gemma3_runtime.cli.result) for the summary, never the step's output. On SLURM, `job` runs as the
callable of a submitit job (`submitit_job`), inside the container.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .contract import REQUEUE_EXIT_CODE, TERMINAL_STATE_FILE
from .jobwrap_io import (
    Redactor,
    answers,
    attempt_number,
    every_rank_asked_for_requeue,
    executed_command,
    exit_dir,
    load_plan,
    log_command,
    pump,
    rank_records,
    step_result,
)
from .jobwrap_node import FORWARDED_SIGNALS, run_node, run_rank
from .plan import CONTAINER_NAME_ENV, JobPlan, Step
from .record import (
    JOB_WRAPPER_ENV,
    PLAN_FILE,
    STEPS_DONE_FILE,
    add_state,
    now,
    process_start_ticks,
    update_record,
    write_json_atomic,
    write_terminal_state,
)

#: set while our own `scontrol requeue` ends this attempt (its SIGTERM is not a cancel).
_REQUEUEING = False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_slurm() -> bool:
    return "SLURM_JOB_ID" in os.environ


class _JobSignals:
    """The job level's SIGUSR2/SIGTERM handling: records what arrived, says CANCELLED at once on SIGTERM (the
    scheduler may SIGKILL us after KillWait), and forwards to the running step where the scheduler does not."""

    def __init__(self, run_dir: Path, plan: JobPlan, attempt: int):
        self.run_dir, self.plan, self.attempt = run_dir, plan, attempt
        self.received: list[int] = []
        self.child: subprocess.Popen | None = None
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, self.forward)

    def forward(self, signum: int, _frame: object) -> None:
        if _REQUEUEING:
            return  # `scontrol requeue` (ours) terminates this attempt: not a cancel
        self.received.append(signum)
        print(f"jobwrap: got {signal.Signals(signum).name}, forwarding to the step", flush=True)
        if signum == signal.SIGTERM and self.plan.backend != "k8s":
            # scancel / time limit / local cancel: overwritten if we finish
            write_terminal_state(self.run_dir, "CANCELLED", 128 + signum, attempt=self.attempt, reason="SIGTERM")
        if self.plan.backend == "slurm" and _in_slurm():
            return  # SLURM signals every step of the job itself (`--signal=USR2@LEAD`, scancel): no second copy
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)


def _begin_attempt(run_dir: Path, attempt: int) -> None:
    def begin(rec: dict) -> None:
        rec.setdefault("attempts", []).append(
            {
                "attempt": attempt,
                "host": socket.gethostname(),
                "started_at": now(),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                "container_name": os.environ.get(CONTAINER_NAME_ENV),
            }
        )
        add_state(rec, "RUNNING", attempt=attempt)

    update_record(run_dir, begin)
    (run_dir / TERMINAL_STATE_FILE).unlink(missing_ok=True)  # a new attempt runs: no earlier verdict stands


def steps_done(run_dir: Path) -> list[str]:
    """The steps that completed in earlier attempts (steps_done.json, a JSON list): never run again."""
    try:
        found = json.loads((run_dir / STEPS_DONE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [str(name) for name in found] if isinstance(found, list) else []


def run_job(run_dir: Path) -> int:
    plan = load_plan(run_dir)
    if plan is None:
        print(f"jobwrap: {run_dir / PLAN_FILE}: expected the job's plan", file=sys.stderr)
        return 2
    attempt = attempt_number()
    started = time.time()
    os.environ[JOB_WRAPPER_ENV] = f"{os.getpid()}:{process_start_ticks(os.getpid())}"  # inherited by every step
    _begin_attempt(run_dir, attempt)
    redact = Redactor(plan.secrets)
    done = steps_done(run_dir)
    signals = _JobSignals(run_dir, plan, attempt)
    if not _in_slurm() and not os.environ.get("MASTER_PORT"):
        os.environ["MASTER_PORT"] = str(_free_port())  # two local torchrun jobs must not share 29500

    rc = 0
    for index, step in enumerate(plan.steps):
        if step.name in done:
            print(f"jobwrap: step {step.name}: already done (attempt {attempt}), skipped", flush=True)
            continue
        print(f"jobwrap: step {index + 1}/{len(plan.steps)} {step.name}: {' '.join(step.args)}", flush=True)
        rc = _run_step_with_retries(run_dir, plan, step, attempt, signals, redact)
        if rc != 0:
            break
        done.append(step.name)
        write_json_atomic(run_dir / STEPS_DONE_FILE, done)

    return _finish(run_dir, plan, rc, signals.received, attempt, time.time() - started)


def _run_step_with_retries(
    run_dir: Path, plan: JobPlan, step: Step, attempt: int, signals: _JobSignals, redact: Redactor
) -> int:
    """Run `step`; a training step whose worker or torchrun was killed (not cancelled, not preempted) runs again in
    this allocation - it resumes from its last committed checkpoint - up to resources.max_step_retries times. Each
    failure's cause goes into job.json (`step_failures`) before the retry."""
    retries = 0
    while True:
        shutil.rmtree(exit_dir(run_dir, step), ignore_errors=True)  # each try's workers record afresh (and `retry`)
        rc = _run_step_once(run_dir, step, attempt, signals, redact, retries)
        if rc in (0, REQUEUE_EXIT_CODE) or signals.received:
            return rc
        cause = failure_cause(run_dir, step, rc)
        can_retry = step.preemptible and cause["killed"] and retries < plan.resources.max_step_retries
        _record_failure(run_dir, step, attempt, retries, cause, retried=can_retry)
        if not can_retry:
            return rc
        retries += 1
        print(
            f"jobwrap: step {step.name}: {cause['text']}; retry {retries}/{plan.resources.max_step_retries} from "
            "the last committed checkpoint",
            flush=True,
        )
        if not _in_slurm():
            os.environ["MASTER_PORT"] = str(_free_port())  # the killed rendezvous may still hold its port


def _run_step_once(run_dir: Path, step: Step, attempt: int, signals: _JobSignals, redact: Redactor, retry: int) -> int:
    t0 = time.time()
    command = executed_command(step)
    log_command(run_dir, "job", step, command)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    signals.child = proc
    pump(proc, redact)
    rc = proc.wait()
    signals.child = None
    secs = round(time.time() - t0, 1)
    print(f"jobwrap: step {step.name}: exit {rc} after {secs}s", flush=True)
    if rc not in (0, REQUEUE_EXIT_CODE) and every_rank_asked_for_requeue(run_dir, step):
        print(
            f"jobwrap: step {step.name}: every worker saved and exited {REQUEUE_EXIT_CODE}; exit {rc} came "
            "from srun stopping the slower nodes: treated as a requeue request",
            flush=True,
        )
        rc = REQUEUE_EXIT_CODE
    result = step_result(run_dir, step, attempt)
    said = [str(line) for line in result.get("summary") or []] + answers(result.get("answers_file"))
    entry = {
        "name": step.name,
        "exit_code": rc,
        "seconds": secs,
        "attempt": attempt,
        "retry": retry,
        "ended_at": now(),
        "highlights": said,
        "result": result or None,
    }
    update_record(run_dir, lambda rec: rec.setdefault("steps", []).append(entry))
    return rc


def _signal_name(code: int) -> str | None:
    """SIGKILL for -9 (Popen) or 137 (a shell / srun's 128+N); None when the code is no signal death."""
    num = -code if code < 0 else code - 128 if 128 < code < 160 else 0
    try:
        return signal.Signals(num).name if num else None
    except ValueError:
        return None


def failure_cause(run_dir: Path, step: Step, rc: int) -> dict:
    """Why this try of `step` failed, from what the wrappers left: the step command's own exit (a signal death of
    torchrun / the node wrapper / srun), and each worker's exit record - a worker killed by a signal writes none
    (its `rank` wrapper dies with it), so a missing rank is a killed rank. `killed` says the failure was a kill
    (retrying may help), not a worker that exited with an error of its own."""
    records = rank_records(exit_dir(run_dir, step))
    seen = {str(r.get("rank")) for r in records}
    missing = sorted(r for r in range(step.world_size) if str(r) not in seen) if step.world_size > 1 else []
    failed = [r for r in records if r.get("exit_code") not in (0, None)]
    sig = _signal_name(rc)
    parts = [f"exit {rc}" + (f" ({sig})" if sig else "")]
    if missing:
        parts.append("rank(s) " + ",".join(map(str, missing)) + " killed (no exit record)")
    for r in failed:
        parts.append(f"rank {r.get('rank')} on node {r.get('node_rank')} exited {r.get('exit_code')}")
    killed = bool(sig or missing)  # the others' exits are collateral: torchrun / srun stopped them after the kill
    return {"text": "; ".join(parts), "exit_code": rc, "signal": sig, "killed_ranks": missing, "killed": killed}


def _record_failure(run_dir: Path, step: Step, attempt: int, retry: int, cause: dict, *, retried: bool) -> None:
    entry = {"step": step.name, "attempt": attempt, "retry": retry, "at": now(), "retried": retried, **cause}

    def add(rec: dict) -> None:
        rec.setdefault("step_failures", []).append(entry)
        rec["step_retries"] = sum(1 for f in rec["step_failures"] if f.get("retried"))

    update_record(run_dir, add)


def _finish(run_dir: Path, plan: JobPlan, rc: int, received: list[int], attempt: int, seconds: float) -> int:
    if rc == REQUEUE_EXIT_CODE and _in_slurm() and signal.SIGTERM not in received:
        if attempt < plan.slurm.max_requeues:
            global _REQUEUEING
            _REQUEUEING = True
            update_record(run_dir, lambda rec: add_state(rec, "REQUEUED", attempt=attempt))
            print(f"jobwrap: checkpoint committed; requeueing SLURM job {os.environ['SLURM_JOB_ID']}", flush=True)
            req = subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], capture_output=True, text=True)
            if req.returncode == 0:
                return rc
            _REQUEUEING = False
            print(f"jobwrap: scontrol requeue failed: {req.stderr.strip()}", flush=True)
        state = "PREEMPTED"
    elif rc == 0:
        state = "COMPLETED"
    elif signal.SIGTERM in received and plan.backend != "k8s":
        state = "CANCELLED"  # scancel / local cancel (on k8s, SIGTERM means preemption)
    elif rc == REQUEUE_EXIT_CODE:
        state = "PREEMPTED"  # saved; a resubmission resumes from the checkpoint
    else:
        state = "FAILED"
    write_terminal_state(run_dir, state, rc, attempt=attempt)

    def end(rec: dict) -> None:
        add_state(rec, state, exit_code=rc)
        rec["exit_code"] = rc
        rec["ended_at"] = now()
        if rec.get("attempts"):
            rec["attempts"][-1].update(ended_at=now(), exit_code=rc, seconds=round(seconds, 1))

    rec = update_record(run_dir, end)
    _print_summary(rec, state, rc)
    return rc


def submitit_job(run_dir: str) -> None:
    """What the SLURM backend hands submitit's executor: the job wrapper, run in-process by submitit's job side
    (`python3 -m submitit.core._submit`, inside the container). A non-zero exit leaves the process with that code,
    so SLURM's own job state says FAILED; our signal handlers replace submitit's (we requeue ourselves)."""
    rc = run_job(Path(run_dir).resolve())
    if rc != 0:
        sys.exit(rc)


def _print_summary(rec: dict, state: str, rc: int) -> None:
    print(f"\n== job {rec.get('job_id')}: {state} (exit {rc})", flush=True)
    for s in rec.get("steps", []):
        print(f"   step {s['name']:<16} exit {s['exit_code']:<4} {s['seconds']:>8.1f}s", flush=True)
        for line in s.get("highlights") or []:
            print(f"        {line}", flush=True)
    for k, v in (rec.get("outputs") or {}).items():
        print(f"   {k:<21} {v}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["job"] and len(argv) == 2:
        return run_job(Path(argv[1]).resolve())
    if argv[:1] == ["node"] and len(argv) == 3:
        return run_node(Path(argv[1]).resolve(), int(argv[2]))
    if argv[:1] == ["rank"] and len(argv) >= 2:
        return run_rank(argv[1:])
    print(
        "usage: python -m gemma3_launch.jobwrap job RUN_DIR | node RUN_DIR STEP | rank MODULE ARGS...", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""`gemma3-launch retry JOB`: continue a job that ended without completing, in the SAME run dir.

The job's own plan.json is submitted again to its backend (nothing is re-planned, so it runs what the first
submission rendered). The job wrapper then skips every step listed in steps_done.json and each training step
resumes from its last committed checkpoint - a step that completed is never re-run. The new backend id goes into
job.json, the earlier ones into `retried_from`. Also here: the lines `status` prints about killed processes.
"""

from __future__ import annotations

from pathlib import Path

from .record import BATCH_KILLED, CANCEL_REQUESTED, TERMINAL_STATES

#: states `retry` continues: the job ended and did not complete (COMPLETED and active jobs are refused).
RETRYABLE_STATES = tuple(s for s in TERMINAL_STATES if s != "COMPLETED")


class RetryRefused(ValueError):
    """The job cannot be retried (still active, completed, or its plan is gone): one line for the user (exit 2)."""


def retry_job(rec: dict) -> str:
    """Submit `rec`'s own plan again, in its run dir; return the line to print. Raises RetryRefused."""
    from .backends import get_backend
    from .jobwrap_io import load_plan
    from .record import add_state, now, update_record
    from .registry import Registry
    from .submit import refresh

    state = refresh(rec["job_id"])
    if state not in RETRYABLE_STATES:
        raise RetryRefused(f"job: {rec['job_id']} is {state}: expected a job that ended without completing")
    plan = load_plan(Path(rec["run_dir"]))
    if plan is None:
        raise RetryRefused(f"job: {rec['job_id']}: expected its plan.json in {rec['run_dir']}")
    previous = rec.get("backend_id")
    backend_id = get_backend(plan.backend).submit(plan, Path(rec["run_dir"]))

    def retried(r: dict) -> None:
        r.setdefault("retried_from", []).append({"backend_id": previous, "state": state, "at": now()})
        r["backend_id"] = backend_id
        r.pop(CANCEL_REQUESTED, None)
        add_state(r, "PENDING", source="retry", previous_state=state)

    Registry().upsert(update_record(rec["run_dir"], retried))
    return f"retried {rec['job_id']} ({state}): {plan.backend}:{backend_id}, same run dir {rec['run_dir']}"


def record_cancel_request(run_dir: str) -> None:
    """Note in job.json that the user asked `cancel` to end the job: its end then reads as a cancel, never a kill."""
    from .record import now, update_record

    update_record(run_dir, lambda r: r.__setitem__(CANCEL_REQUESTED, now()))


def fault_lines(rec: dict, state: str) -> list[str]:
    """`status`'s lines about killed processes: in-job retries with the last cause, a SLURM job whose batch script
    was SIGKILLed (its last state says so), and a job whose wrapper died (the scheduler says it ended, the record
    never got a verdict: the job wrapper or the batch step was killed)."""
    lines = []
    failures = rec.get("step_failures") or []
    if failures:
        last = failures[-1]
        lines.append(
            f"  retries {rec.get('step_retries', 0)} in job; last failure: step {last['step']}: {last['text']}"
        )
    recorded = [s.get("state") for s in rec.get("states") or [] if s.get("source") != "status"]
    if state in RETRYABLE_STATES and (rec.get("states") or [{}])[-1].get("reason") == BATCH_KILLED:
        lines.append(
            f"  cause: {BATCH_KILLED} (SIGKILL, not a cancel);"
            f" `gemma3-launch retry {rec.get('job_id')}` continues it from its last committed checkpoint"
        )
    elif (
        state in RETRYABLE_STATES
        and state != "CANCELLED"  # a cancel (scancel's SIGTERM, `cancel`): a SIGKILLed batch script reads FAILED
        and not rec.get(CANCEL_REQUESTED)
        and recorded
        and recorded[-1] in ("RUNNING", "REQUEUED")
    ):
        lines.append(
            "  cause: job wrapper or batch step killed (the job ended without writing its verdict);"
            f" `gemma3-launch retry {rec.get('job_id')}` continues it from its last committed checkpoint"
        )
    elif state in RETRYABLE_STATES:
        lines.append(f"  `gemma3-launch retry {rec.get('job_id')}` continues it from its last committed checkpoint")
    return lines

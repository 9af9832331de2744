"""Submitting a plan: the run directory, the job record, lineage, the index. Shared by every backend.

Nothing half-written: the run dir is assembled under a temporary name and renamed into place before the backend
sees it; if the backend then refuses, the record says SUBMIT_FAILED (it is not deleted: it documents the attempt).
A submit killed at any point leaves a registered job or nothing (SUBMIT_PHASES; the registry's submit intents).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
from pathlib import Path

import yaml

from . import __version__
from .backends import BackendError, get_backend
from .contract import JOB_RECORD_FILE
from .durable import fsync_dir, fsync_tree
from .job_ids import new_job_id  # noqa: F401 - the CLI takes it from here, with submit
from .plan import JobPlan
from .record import PLAN_FILE, add_state, now, read_record, update_record, write_json_atomic
from .registry import Registry
from .spec import JobSpec

log = logging.getLogger(__name__)


def git_state(path: Path | None = None) -> dict:
    """SHA and dirty flag of the project checkout the launcher runs from (none for a wheel install)."""
    root = path or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"sha": None, "dirty": None, "note": "not a git checkout"}
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"sha": None, "dirty": None, "note": "git unavailable"}


def lineage(plan: JobPlan, registry: Registry) -> dict:
    """For each input path (e.g. the checkpoint an export reads), the job that produced it, if we ran it."""
    found: dict = {}
    wanted = {k: os.path.abspath(v) for k, v in plan.inputs.items() if k != "model" or os.path.exists(v)}
    if not wanted:
        return found
    # newest first; a job that COMPLETED beats a newer one that did not (it is what actually wrote the files)
    rows = sorted(
        registry.all(), key=lambda r: (r.get("state") == "COMPLETED", r.get("submitted_at") or ""), reverse=True
    )
    for row in rows:
        rec = read_record(row["run_dir"]) if row.get("run_dir") else None
        for out_key, out_path in ((rec or {}).get("outputs") or {}).items():
            for in_key, in_path in wanted.items():
                if os.path.abspath(out_path) == in_path and in_key not in found:
                    found[in_key] = {
                        "path": in_path,
                        "job_id": rec["job_id"],
                        "output": out_key,
                        "state": rec.get("state"),
                    }
    return found


#: The phases of `submit`, in order. A process killed between any two leaves a state the next `list` / `status`
#: understands (docs/CONTRACTS.md, "Writes and the CLI"): before `run_dir_committed` nothing is visible (the intent
#: and the temporary run dir are cleaned up by the next launcher command); from then on the run dir holds a complete
#: job.json, which that next command indexes, marking it SUBMIT_INTERRUPTED when the scheduler's id never got in.
SUBMIT_PHASES = (
    "validated",
    "intent_recorded",
    "run_dir_created",
    "plan_written",
    "run_dir_committed",
    "registered",
    "scheduler_submitted",
    "record_updated",
)


def _reached(phase: str, job_id: str) -> None:
    """Marks the end of one of SUBMIT_PHASES (a debug log line; the fault tests stop the process here)."""
    log.debug("submit %s: %s", job_id, phase)


def _write_run_dir(tmp: Path, spec: JobSpec, plan: JobPlan) -> None:
    write_json_atomic(tmp / PLAN_FILE, plan.to_dict())
    for relpath, text in plan.files.items():  # long / multi-line values the steps read (e.g. a multi-line prompt)
        target = (tmp / relpath).resolve()
        if tmp.resolve() not in target.parents:
            raise ValueError(f"plan file {relpath!r} is outside the run dir")  # the plan names only its own files
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), encoding="utf-8")


def _new_record(spec: JobSpec, plan: JobPlan, final: Path, registry: Registry) -> dict:
    rec = {
        "job_id": plan.job_id,
        "name": plan.job_name,
        "kind": plan.kind,
        "backend": plan.backend,
        "backend_id": None,
        "run_dir": str(final),
        "spec_hash": plan.spec_hash,
        "spec": spec.model_dump(mode="json"),
        "git": git_state(),
        "launcher_version": __version__,
        "submitted_at": now(),
        "submitted_from": {"host": socket.gethostname(), "cwd": os.getcwd()},
        "image": plan.image,
        "secrets": list(plan.secrets),  # names only
        "inputs": dict(plan.inputs),
        "outputs": dict(plan.outputs),
        "lineage": lineage(plan, registry),
        "states": [],
    }
    add_state(rec, "SUBMITTED")
    return rec


def submit(spec: JobSpec, plan: JobPlan) -> dict:
    """Write the run dir, register the job and hand it to the scheduler, in the order of SUBMIT_PHASES."""
    _reached("validated", plan.job_id)
    registry = Registry()
    final = Path(plan.run_dir)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    registry.begin_submit(plan.job_id, final, tmp)
    _reached("intent_recorded", plan.job_id)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        _reached("run_dir_created", plan.job_id)
        _write_run_dir(tmp, spec, plan)
        rec = _new_record(spec, plan, final, registry)
        write_json_atomic(tmp / JOB_RECORD_FILE, rec)
        fsync_tree(tmp)
        _reached("plan_written", plan.job_id)
        os.rename(tmp, final)
    except BaseException:  # an error (not a kill) before the commit leaves nothing
        shutil.rmtree(tmp, ignore_errors=True)
        registry.end_submit(plan.job_id)
        raise
    fsync_dir(final.parent)
    _reached("run_dir_committed", plan.job_id)
    registry.upsert(rec)
    _reached("registered", plan.job_id)
    try:
        backend_id = get_backend(plan.backend).submit(plan, final)
    except BackendError as exc:
        error = str(exc)
        rec = update_record(final, lambda r: add_state(r, "SUBMIT_FAILED", error=error))
        registry.upsert(rec)
        registry.end_submit(plan.job_id)
        raise
    _reached("scheduler_submitted", plan.job_id)

    def submitted(r: dict) -> None:
        r["backend_id"] = backend_id
        if r.get("state") == "SUBMITTED":
            add_state(r, "PENDING")

    rec = update_record(final, submitted)
    registry.upsert(rec)
    _reached("record_updated", plan.job_id)
    registry.end_submit(plan.job_id)
    return rec


def refresh(job_id: str) -> str:
    """Ask the backend for the job's state, record a change in job.json and the index, return it."""
    registry = Registry()
    row = registry.get(job_id)
    if row is None:  # the index was removed meanwhile (it is only a cache)
        return "UNKNOWN"
    rec = read_record(row["run_dir"])
    if rec is None:
        return row.get("state") or "UNKNOWN"
    state = get_backend(rec["backend"]).status(rec)

    def record_change(r: dict) -> None:
        if r.get("state") != state:  # compared again under the lock: the backend may have recorded it with its reason
            add_state(r, state, source="status")

    if state != rec.get("state") and state != "UNKNOWN":
        rec = update_record(rec["run_dir"], record_change)
    registry.upsert(rec)
    return state

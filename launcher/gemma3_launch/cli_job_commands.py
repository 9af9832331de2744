"""The job commands of `gemma3-launch`: status, logs, cancel, list, checkpoints. Each finds a job in the index
(registry.py) and reads its record, its backend or its run directory; imports stay lazy (cli.py's start-up promise).
"""

from __future__ import annotations

import argparse
import os
import sys

from .cli_common import PROG, InputError, print_warning


def _find(job: str) -> dict:
    """The job.json record of `job` (an id or a unique prefix), checked: a wrong-typed record is an input error."""
    from .contract import JOB_RECORD_FILE
    from .record import load_record_file
    from .registry import Registry

    try:
        job.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("job: expected a job id (UTF-8 text)") from None
    row = Registry().get(job)
    if row is None:
        raise InputError(f"job: no job '{job}' in the index (see `{PROG} list`, or `{PROG} list --rebuild`)")
    if not row.get("run_dir"):
        raise InputError(f"job: {row['job_id']}: expected a run directory in the index (try `{PROG} list --rebuild`)")
    path = os.path.join(row["run_dir"], JOB_RECORD_FILE)
    rec, problem = load_record_file(path)
    if rec is None:
        raise InputError(f"job: {path}: {problem}")
    return rec


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from .progress import job_progress
    from .record import read_record
    from .retry import fault_lines
    from .submit import refresh

    rec = _find(args.job)
    state = refresh(rec["job_id"])
    current = read_record(rec["run_dir"]) or {**rec, "state": state}
    progress = job_progress(current)
    if args.json:
        print(json.dumps({**current, "progress": progress.to_dict()}, indent=2))
        return 0
    from .quoting import comment_text

    detail = ""
    if state in ("FAILED", "TIMEOUT") and rec["backend"] == "k8s":  # the failing step's exit code
        from .backends import k8s

        code = k8s.exit_code(rec)
        detail = f" (exit {code})" if code is not None else ""
    line = f"{rec['job_id']}  {state}{detail}  {rec['backend']}:{rec.get('backend_id')}  {rec['run_dir']}"
    print(comment_text(line))
    for text in [*_progress_lines(progress), *fault_lines(current, state)]:
        print(comment_text(text))
    return 0


def _progress_lines(progress) -> list[str]:
    """`status`'s lines under the job line: only what is known."""
    from .progress import format_duration

    lines = []
    if progress.note:
        lines.append(f"  progress: {progress.note}")
    if progress.step is not None or progress.elapsed_s is not None:
        parts = []
        if progress.step is not None:
            of = f"/{progress.total}" if progress.total else ""
            pct = f" ({100 * progress.step / progress.total:.0f}%)" if progress.total else ""
            parts.append(f"step {progress.step}{of}{pct}")
        if progress.loss is not None:
            parts.append(f"loss {progress.loss:.4f}")
        if progress.tokens_per_s is not None:
            parts.append(f"{progress.tokens_per_s:,.0f} tokens/s")
        parts.append(f"elapsed {format_duration(progress.elapsed_s)}")
        if progress.eta_s is not None:
            parts.append(f"ETA {format_duration(progress.eta_s)}")
        lines.append("  progress: " + "  ".join(parts))
    if progress.last_checkpoint:
        ckpt = progress.last_checkpoint
        lines.append(f"  checkpoint: iteration {ckpt['iteration']} ({ckpt['time'] or 'time unknown'})  {ckpt['path']}")
    if progress.wandb:
        wb = progress.wandb
        where = f" ({wb['mode']}, {wb['dir']})" if wb.get("mode") else ""
        lines.append(f"  wandb: run {wb['id']}{where}")
    return lines


def cmd_logs(args: argparse.Namespace) -> int:
    from .backends import get_backend

    rec = _find(args.job)
    get_backend(rec["backend"]).logs(rec, args.follow)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from .retry import RetryRefused, retry_job

    try:
        print(retry_job(_find(args.job)))
    except RetryRefused as exc:
        raise InputError(str(exc)) from None
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from .backends import get_backend
    from .retry import record_cancel_request
    from .submit import refresh

    rec = _find(args.job)
    record_cancel_request(rec["run_dir"])  # so its end reads as a cancel, never as a kill
    get_backend(rec["backend"]).cancel(rec)
    print(f"cancel requested: {rec['job_id']} ({refresh(rec['job_id'])})")
    return 0


def _job_filter(args: argparse.Namespace):
    import time

    from .record import ACTIVE_STATES, TERMINAL_STATES
    from .registry import JobFilter, parse_since

    known = (*ACTIVE_STATES, *TERMINAL_STATES, "SUBMIT_FAILED", "UNKNOWN")
    states = tuple(s.strip().upper() for s in args.state)
    for state in states:
        if state not in known:
            raise InputError(f"--state: expected one of {', '.join(known)}")
    since = None
    if args.since is not None:
        try:
            since = parse_since(args.since, time.time())
        except ValueError as exc:
            raise InputError(f"--since: {exc}") from None
    return JobFilter(states=states, kinds=tuple(args.kind), since=since, name=args.name)


def cmd_list(args: argparse.Namespace) -> int:
    import dataclasses

    from .registry import Registry

    job_filter = _job_filter(args)
    reg = Registry(warn=print_warning)
    if args.rebuild:
        n = reg.rebuild(args.runs_dir)
        print(f"index rebuilt from run directories: {n} job(s)", file=sys.stderr)
    rows = reg.all(args.cluster)
    from .quoting import comment_text
    from .record import TERMINAL_STATES
    from .submit import refresh

    # only unfinished jobs need the scheduler (finished states are final); the state filter applies after refreshing
    others = dataclasses.replace(job_filter, states=())
    active = [r["job_id"] for r in rows if r["state"] not in TERMINAL_STATES and others.keeps(r)]
    if active:
        for job_id in active:
            try:
                refresh(job_id)
            except Exception as exc:  # noqa: BLE001 - a listing must not die on one unreachable backend
                print_warning(f"{job_id}: state not refreshed ({exc.__class__.__name__})")
    rows = reg.all(args.cluster, job_filter)
    if args.json:
        from .registry import dump_rows

        print(dump_rows(rows))
        return 0
    print(f"{'JOB ID':<44} {'KIND':<9} {'BACKEND':<7} {'STATE':<11} SUBMITTED")
    for r in rows:
        # index values come from job.json files: shown with control characters escaped
        job_id, kind, backend, state, at = (comment_text(str(r[c] or "")) for c in _LIST_COLUMNS)
        print(f"{job_id:<44} {kind:<9} {backend:<7} {state:<11} {at}")
    return 0


_LIST_COLUMNS = ("job_id", "kind", "backend", "state", "submitted_at")


def cmd_checkpoints(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict
    from pathlib import Path

    from .progress import format_size, list_checkpoints
    from .quoting import comment_text

    rec = _find(args.job)
    outputs = rec.get("outputs") if isinstance(rec.get("outputs"), dict) else {}
    save_dir = outputs.get("checkpoint")
    if not isinstance(save_dir, str) or not save_dir:
        raise InputError(f"job: {rec['job_id']} is a {rec.get('kind')} job: expected a job that writes checkpoints")
    if not Path(save_dir).is_dir() and not Path(rec["run_dir"]).is_dir():
        raise InputError(f"job: {rec['job_id']}: its checkpoint dir {save_dir} is not reachable from this machine")
    found = list_checkpoints(Path(save_dir))
    if args.json:
        print(json.dumps([asdict(c) for c in found], indent=2))
        return 0
    if not found:
        print(comment_text(f"no committed checkpoint in {save_dir}"))
        return 0
    print(f"{'ITERATION':>9}  {'SIZE':>10}  {'TIME (UTC)':<25} PATH")
    for c in found:
        print(comment_text(f"{c.iteration:>9}  {format_size(c.size_bytes):>10}  {c.time or '-':<25} {c.path}"))
    return 0

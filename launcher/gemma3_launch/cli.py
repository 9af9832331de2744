"""`gemma3-launch`: validate | render | submit | status | logs | cancel | list | checkpoints | schema.

Exit codes: 0 ok; 2 invalid input (one line naming the file/field and what was expected; nothing submitted or
registered); 1 a backend failure; a followed job's own non-zero exit code otherwise. Imports are lazy so that
`--help` and `render` start fast and never load torch (bench/launcher.py measures it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .contract import INVALID_INPUT_EXIT_CODE

PROG = "gemma3-launch"
#: the spec's job kinds (spec.JobKind), repeated here so that `--help` does not import pydantic; a unit test compares.
JOB_KINDS = ("import", "export", "pretrain", "finetune", "generate")


def _version() -> str:
    """The installed distribution's version (importlib.metadata), else the package's own."""
    from importlib import metadata

    try:
        return metadata.version(PROG)
    except metadata.PackageNotFoundError:
        from . import __version__

        return __version__


class InputError(Exception):
    """Bad input found by the CLI itself (unknown job id, missing secret): exit 2."""


class _VersionAction(argparse.Action):
    """`--version`, looked up only when asked for (importlib.metadata costs start-up time on every other command)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{PROG} {_version()}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Run Gemma 3 jobs on SLURM, Kubernetes or locally from one YAML spec."
    )
    p.add_argument("--version", action=_VersionAction, help="print the launcher's version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def spec_cmd(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        c.add_argument("spec", help="job spec YAML")
        c.add_argument("--cluster", choices=("local", "slurm", "k8s"), default="local", help="where the job runs")
        c.add_argument(
            "--set",
            dest="sets",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a spec field (repeatable; VALUE is YAML): KEY=VALUE replaces it, e.g. resources.nodes=2"
            " (a replaced list's dropped entries are noted); KEY+=VALUE appends to a list, e.g. overrides+=a.b=1",
        )
        c.add_argument(
            "--image",
            metavar="IMAGE",
            help="the job's image when the spec's container.image names none (wins over $GEMMA3_LAUNCH_IMAGE)",
        )
        c.add_argument(
            "--require-pinned-image", action="store_true", help="a tag-only image is an error, not a warning"
        )
        c.add_argument(
            "--ephemeral-run-dir-ok",
            action="store_true",
            help="k8s: a run dir outside a persistent volume is a warning, not an error (restarts redo finished steps)",
        )
        return c

    v = spec_cmd("validate", "check a spec (and, with --cluster, that it fits that cluster)")
    v.set_defaults(cluster=None)  # no --cluster: check against the cluster kinds (slurm, k8s), not this machine
    r = spec_cmd("render", "print exactly what would be submitted")
    r.add_argument(
        "--format",
        choices=("native", "plan", "helm-values"),
        default="native",
        help="native: sbatch script / PyTorchJob YAML / local command; plan: the JobPlan as JSON",
    )
    s = spec_cmd("submit", "submit a job")
    s.add_argument("--dry-run", action="store_true", help="print what would be submitted; submit and record nothing")
    s.add_argument("--follow", "-f", action="store_true", help="stream the log until the job ends; exit with its code")

    st = sub.add_parser("status", help="state and progress of a job (step, loss, tokens/s, ETA, last checkpoint)")
    st.add_argument("job", help="job id (or a unique prefix)")
    st.add_argument("--json", action="store_true", help="print the job record with its progress as JSON")
    lg = sub.add_parser("logs", help="print a job's log")
    lg.add_argument("job")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    cn = sub.add_parser("cancel", help="cancel a job")
    cn.add_argument("job")
    rt = sub.add_parser("retry", help="continue a job that ended without completing, from its last checkpoint")
    rt.add_argument("job", help="job id (or a unique prefix)")
    ls = sub.add_parser("list", help="jobs in the index, newest first")
    ls.add_argument("--cluster", choices=("local", "slurm", "k8s"), default=None)
    ls.add_argument("--state", action="append", default=[], help="only jobs in this state, e.g. RUNNING (repeatable)")
    ls.add_argument(
        "--kind", action="append", default=[], choices=JOB_KINDS, help="only jobs of this kind (repeatable)"
    )
    ls.add_argument("--since", help="only jobs submitted since: an age (30m, 2h, 3d, 1w) or an ISO date[-time] (UTC)")
    ls.add_argument("--name", help="only jobs whose name or id matches this shell glob, e.g. 'demo-*'")
    ls.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    ls.add_argument("--rebuild", action="store_true", help="rebuild the index from the run directories' job.json")
    ls.add_argument("--runs-dir", action="append", default=[], help="also scan this runs directory when rebuilding")
    ck = sub.add_parser("checkpoints", help="a training job's committed checkpoints (iteration, size, time)")
    ck.add_argument("job", help="job id (or a unique prefix)")
    ck.add_argument("--json", action="store_true", help="print them as a JSON list")
    sub.add_parser("schema", help="print the job spec's JSON schema (for editors)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Every error reaches the user as ONE line (credentials.one_line: no control characters, nothing shaped like a
    credential), never as a traceback; GEMMA3_LAUNCH_TRACEBACK=1 re-raises unexpected errors for debugging."""
    args = _parser().parse_args(argv)
    from .backends import BackendError
    from .credentials import one_line
    from .loader import SpecError
    from .plan import PlanError
    from .quoting import UnsafeValueError

    try:
        return int(_COMMANDS[args.command](args) or 0)
    except (SpecError, PlanError, InputError, UnsafeValueError) as exc:
        print(f"{PROG} {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return INVALID_INPUT_EXIT_CODE
    except BackendError as exc:
        where = getattr(args, "cluster", None) or "backend"
        print(f"{PROG} {args.command}: {where} error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("GEMMA3_LAUNCH_TRACEBACK"):
            raise
        print(f"{PROG} {args.command}: error: {one_line(f'{exc.__class__.__name__}: {exc}')}", file=sys.stderr)
        return 1


def _warn(message: str) -> None:
    from .credentials import one_line

    print(f"{PROG}: warning: {one_line(message)}", file=sys.stderr)


# ---- spec commands -----------------------------------------------------------------------------------------------
def _plan(args: argparse.Namespace, job_id: str | None = None, warn: bool = True):
    from .clusters import cluster_for
    from .loader import load_spec
    from .plan import PlanError, make_plan

    spec = load_spec(args.spec, args.sets, warn=_warn if warn else None)
    if not os.path.isabs(spec.runs_dir):  # a record's run dir must not depend on cwd
        spec = spec.model_copy(update={"runs_dir": os.path.abspath(spec.runs_dir)})
    try:
        cluster = cluster_for(args.cluster, require_pinned_image=args.require_pinned_image, image=args.image)
        plan = make_plan(spec, cluster, job_id=job_id)
    except PlanError as exc:
        raise InputError(f"{args.spec}: {exc}") from None
    for w in plan.warnings if warn else ():
        _warn(w)
    if args.cluster == "k8s":
        from .render_k8s import run_dir_problem

        problem = run_dir_problem(plan)
        if problem and not args.ephemeral_run_dir_ok and args.command != "render":  # render only shows the job
            raise InputError(f"{args.spec}: {problem}")
        if problem and warn:
            _warn(problem)
    return spec, plan


def _check_runtime_config(plan, spec_path: str, warn: bool = True) -> None:
    """The runtime's own config validation of the plan's training steps (torch-free; runtime_config.py)."""
    from .runtime_config import check_plan

    warnings = check_plan(plan, spec_path)
    for w in warnings if warn else ():
        print(f"{PROG}: warning: {w}", file=sys.stderr)


def _render_text(plan, backend: str, fmt: str) -> str:
    import json

    if fmt == "plan":
        return json.dumps(plan.to_dict(), indent=2) + "\n"
    if fmt == "helm-values":
        if backend != "k8s":
            raise InputError("--format helm-values: expected --cluster k8s")
        from .render_helm import helm_values_yaml

        return _k8s_render(helm_values_yaml, plan)
    if backend == "k8s":
        from .k8s_manifests import render_yaml

        return _k8s_render(render_yaml, plan)
    from .backends import get_backend

    return get_backend(backend).render(plan)


def _k8s_render(fn, plan) -> str:
    from .render_k8s import K8sRenderError

    try:
        return fn(plan)
    except K8sRenderError as exc:
        raise InputError(str(exc)) from None


def cmd_validate(args: argparse.Namespace) -> int:
    targets = [args.cluster] if args.cluster else ["slurm", "k8s"]
    for i, cluster in enumerate(targets):
        # without --cluster, a k8s run dir outside a persistent volume is a warning: the spec may target SLURM
        lenient = args.ephemeral_run_dir_ok or not args.cluster
        spec, plan = _plan(
            argparse.Namespace(**{**vars(args), "cluster": cluster, "ephemeral_run_dir_ok": lenient}), warn=i == 0
        )
        _check_runtime_config(plan, args.spec, warn=i == 0)
        if cluster == "k8s":
            _render_text(plan, "k8s", "native")  # the manifest's own checks (e.g. a Secret for secrets)
    steps = ", ".join(s.name for s in plan.steps)
    print(f"ok: {spec.name} ({spec.kind}) on {args.cluster or 'slurm and k8s'}: {len(plan.steps)} step(s): {steps}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    _, plan = _plan(args)
    text = _render_text(plan, args.cluster, args.format)  # a refused render prints its one error line only
    print(f"{PROG}: image: {plan.image} (from {plan.image_source})", file=sys.stderr)
    sys.stdout.write(text)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from .submit import new_job_id, submit

    spec, plan = _plan(args, job_id=None if args.dry_run else new_job_id(_spec_name(args)))
    _check_runtime_config(plan, args.spec)
    if args.dry_run:
        sys.stdout.write(_render_text(plan, args.cluster, "native"))
        print(f"{PROG}: dry run: nothing submitted", file=sys.stderr)
        return 0
    if args.cluster == "k8s":
        _render_text(plan, "k8s", "native")  # fail with exit 2 before anything is written
    missing = [n for n in plan.secrets if args.cluster != "k8s" and not os.environ.get(n)]
    if missing:
        raise InputError(f"secrets.{missing[0]}: expected {missing[0]} to be set in the submitting environment")
    rec = submit(spec, plan)
    print(f"submitted {rec['job_id']} ({args.cluster} id {rec['backend_id']}); run dir {rec['run_dir']}")
    if not args.follow:
        return 0
    return _follow(rec)


def _spec_name(args: argparse.Namespace) -> str:
    from .loader import load_spec

    return load_spec(args.spec, args.sets).name


def _follow(rec: dict) -> int:
    from .backends import get_backend
    from .record import read_record, read_terminal_state
    from .submit import refresh

    backend = get_backend(rec["backend"])
    try:
        backend.logs(rec, True)
    except KeyboardInterrupt:
        print(
            f"\n{PROG}: stopped following; the job keeps running (`{PROG} logs -f {rec['job_id']}`, "
            f"`{PROG} cancel {rec['job_id']}`)",
            file=sys.stderr,
        )
        return 130
    state = refresh(rec["job_id"])
    term = read_terminal_state(rec["run_dir"]) or {}
    code = term.get("exit_code", (read_record(rec["run_dir"]) or {}).get("exit_code"))
    print(f"{PROG}: job {rec['job_id']} {state}")
    if state == "COMPLETED":
        return 0
    return int(code) if isinstance(code, int) and code not in (0, INVALID_INPUT_EXIT_CODE) else 1


# ---- job commands ------------------------------------------------------------------------------------------------
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
    from .submit import refresh

    rec = _find(args.job)
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
    reg = Registry(warn=_warn)
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
                _warn(f"{job_id}: state not refreshed ({exc.__class__.__name__})")
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


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from .spec import JobSpec

    print(json.dumps(JobSpec.model_json_schema(), indent=2))
    return 0


_COMMANDS = {
    "validate": cmd_validate,
    "render": cmd_render,
    "submit": cmd_submit,
    "status": cmd_status,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
    "retry": cmd_retry,
    "list": cmd_list,
    "checkpoints": cmd_checkpoints,
    "schema": cmd_schema,
}

if __name__ == "__main__":
    sys.exit(main())

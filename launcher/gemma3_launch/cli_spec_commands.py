"""The spec commands of `gemma3-launch`: validate, render, submit (and --follow), schema. Each loads the spec, plans
it (plan.make_plan) and shows, checks or submits that plan; imports stay lazy (cli.py's start-up promise)."""

from __future__ import annotations

import argparse
import os
import sys

from .cli_common import PROG, InputError, print_warning
from .contract import INVALID_INPUT_EXIT_CODE


def _plan(args: argparse.Namespace, job_id: str | None = None, warn: bool = True):
    from .clusters import cluster_for
    from .loader import load_spec
    from .plan import PlanError, make_plan

    spec = load_spec(args.spec, args.sets, warn=print_warning if warn else None)
    if not os.path.isabs(spec.runs_dir):  # a record's run dir must not depend on cwd
        spec = spec.model_copy(update={"runs_dir": os.path.abspath(spec.runs_dir)})
    try:
        cluster = cluster_for(args.cluster, require_pinned_image=args.require_pinned_image, image=args.image)
        plan = make_plan(spec, cluster, job_id=job_id)
    except PlanError as exc:
        raise InputError(f"{args.spec}: {exc}") from None
    for w in plan.warnings if warn else ():
        print_warning(w)
    if args.cluster == "k8s":
        from .render_k8s import run_dir_problem

        problem = run_dir_problem(plan)
        if problem and not args.ephemeral_run_dir_ok and args.command != "render":  # render only shows the job
            raise InputError(f"{args.spec}: {problem}")
        if problem and warn:
            print_warning(problem)
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


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from .spec import JobSpec

    print(json.dumps(JobSpec.model_json_schema(), indent=2))
    return 0

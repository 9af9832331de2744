"""`gemma3-launch`: validate | render | submit | status | logs | cancel | retry | list | checkpoints | schema.

Exit codes: 0 ok; 2 invalid input (one line naming the file/field and what was expected; nothing submitted or
registered); 1 a backend failure; a followed job's own non-zero exit code otherwise. Imports are lazy so that
`--help` and `render` start fast and never load torch (bench/launcher.py measures it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import cli_job_commands, cli_spec_commands
from .cli_common import PROG, InputError
from .contract import INVALID_INPUT_EXIT_CODE

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


_COMMANDS = {
    "validate": cli_spec_commands.cmd_validate,
    "render": cli_spec_commands.cmd_render,
    "submit": cli_spec_commands.cmd_submit,
    "status": cli_job_commands.cmd_status,
    "logs": cli_job_commands.cmd_logs,
    "cancel": cli_job_commands.cmd_cancel,
    "retry": cli_job_commands.cmd_retry,
    "list": cli_job_commands.cmd_list,
    "checkpoints": cli_job_commands.cmd_checkpoints,
    "schema": cli_spec_commands.cmd_schema,
}

if __name__ == "__main__":
    sys.exit(main())

"""Entry point of `gemma3-runtime` (also `python -m gemma3_runtime.cli.main`, which is what torchrun starts): `entry`.

Subcommand modules only declare arguments at import time (heavy imports happen inside their `main`), so
`--help` stays fast. A `UserInputError` anywhere becomes one line on stderr and exit code 2; a `StorageFullError`
(disk or quota full) one line and exit code 28 (contract.STORAGE_FULL_EXIT_CODE).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Sequence

from gemma3_launch.contract import INVALID_INPUT_EXIT_CODE, STORAGE_FULL_EXIT_CODE

#: subcommand name -> module under gemma3_runtime.cli
SUBCOMMANDS: dict[str, str] = {
    "convert": "convert",
    "run": "run",
    "generate": "generate",
    "prepare-data": "prepare_data",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemma3-runtime", description="Gemma 3 on megatron-core (runs inside the job)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in SUBCOMMANDS.values():
        module = importlib.import_module(f"gemma3_runtime.cli.{module_name}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(_main=module.main)
    return parser


def package_version() -> str:
    """The installed distribution's version (its metadata, the one source of truth); the source tree's when the
    package runs from a checkout that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gemma3-launch")
    except PackageNotFoundError:
        from gemma3_runtime import __version__

        return __version__


def release_distributed() -> None:
    """Destroy the megatron parallel state and the process group the command created, before the interpreter exits.

    WHY: left to interpreter shutdown, the process group's threads are torn down in no defined order; a torchrun
    rank on CPU (gloo) has aborted after a finished run with "terminate called without an active exception", and
    torch warns that destroy_process_group() was not called. Only when the runtime's platform module was used.
    """
    platform = sys.modules.get("gemma3_runtime.platform")
    if platform is not None and platform.current() is not None:
        platform.teardown()


def main(argv: Sequence[str] | None = None) -> int:
    from gemma3_runtime.cli import result
    from gemma3_runtime.errors import StorageFullError, UserInputError

    result.reset()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except UserInputError as exc:
        message = " ".join(str(exc).split())  # guarantee one line
        print(f"gemma3-runtime {args.command}: error: {message}", file=sys.stderr)
        return INVALID_INPUT_EXIT_CODE
    except (StorageFullError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        message = " ".join(str(exc).split())  # an OSError's text names its file
        print(f"gemma3-runtime {args.command}: error: {message}", file=sys.stderr)
        return STORAGE_FULL_EXIT_CODE


def entry(argv: Sequence[str] | None = None) -> int:
    """The process entry (console script, `python -m`, torchrun): `main`, then the distributed state released.
    In-process callers (tests) use `main` and keep their process group."""
    from gemma3_runtime.cli import result

    code = main(argv)
    release_distributed()
    args = list(sys.argv[1:] if argv is None else argv)
    result.write(args[0] if args else "", code)
    return code


if __name__ == "__main__":
    sys.exit(entry())

"""Entry point of `gemma3-runtime` (also `python -m gemma3_runtime.cli.main`, which is what torchrun starts).

Subcommand modules only declare arguments at import time (heavy imports happen inside their `main`), so
`--help` stays fast. A `UserInputError` anywhere becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from gemma3_launch.contract import INVALID_INPUT_EXIT_CODE

#: subcommand name -> module under gemma3_runtime.cli
SUBCOMMANDS: dict[str, str] = {
    "convert": "convert",
    "run": "run",
    "generate": "generate",
    "prepare-data": "prepare_data",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gemma3-runtime", description="Gemma 3 on megatron-core (runs inside the job).")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"gemma3_runtime.cli.{module_name}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(_main=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from gemma3_runtime.errors import UserInputError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except UserInputError as exc:
        message = " ".join(str(exc).split())  # guarantee one line
        print(f"gemma3-runtime {args.command}: error: {message}", file=sys.stderr)
        return INVALID_INPUT_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())

"""What every `gemma3-launch` command module shares: the program's name, the CLI's own input error (exit 2) and
its one-line warnings."""

from __future__ import annotations

import sys

PROG = "gemma3-launch"


class InputError(Exception):
    """Bad input found by the CLI itself (unknown job id, missing secret): exit 2."""


def print_warning(message: str) -> None:
    """One warning line on stderr, through credentials.one_line (no control characters, no credential)."""
    from .credentials import one_line

    print(f"{PROG}: warning: {one_line(message)}", file=sys.stderr)

"""Subprocess helpers for tests: a module, so any test directory can import it (importing names from a conftest
resolves to whichever conftest pytest loaded first)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def pythonpath() -> str:
    """PYTHONPATH for a subprocess: the source tree first, then whatever the machine set (e.g. a --target install)."""
    parts = [str(REPO / "runtime"), str(REPO / "launcher"), str(REPO / "tests")]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

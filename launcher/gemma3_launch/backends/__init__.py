"""Backends turn a JobPlan into a submission and read it back. Each is a module with the same functions:

    render(plan) -> str                     exactly what submit would submit (script / manifest / command)
    submit(plan, run_dir) -> str            the backend's id for the job (pid, SLURM job id, k8s name)
    status(record) -> str                   current state (record.ACTIVE_STATES / TERMINAL_STATES, or UNKNOWN)
    logs(record, follow) -> None            print the job's log (follow: until the job ends)
    cancel(record) -> None

Modules are imported lazily so `--help` and `render --cluster local` never load the kubernetes client.
Backend failures raise BackendError (exit 1); bad input raises SpecError / PlanError (exit 2).
"""

from __future__ import annotations

import importlib
from types import ModuleType

BACKENDS = ("local", "slurm", "k8s")


class BackendError(RuntimeError):
    """The scheduler refused or failed (exit 1); the message is one line."""


def get_backend(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise ValueError(f"--cluster: expected one of {', '.join(BACKENDS)}, got {name!r}")
    try:
        return importlib.import_module(f"gemma3_launch.backends.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"gemma3_launch.backends.{name}":
            raise BackendError(f"the {name} backend is not available in this installation") from None
        raise

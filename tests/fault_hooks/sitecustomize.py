"""Test-only kill points: put this directory on a subprocess's PYTHONPATH and set GEMMA3_TEST_KILL_AT.

GEMMA3_TEST_KILL_AT="package.module:function:N:when" makes the process SIGKILL itself on the N-th call of
`function` (a module-level name, looked up through the module at call time), `when` = before (the call never runs)
or after (it returned). An optional fifth field restricts the count to calls whose first argument's string form
ends with it (e.g. a file name). With GEMMA3_TEST_KILL_GROUP=1 the whole process group is SIGKILLed (a node
lost while a forked helper, e.g. a background checkpoint writer, is at the kill point). Python runs
`sitecustomize` at start-up; the function is wrapped as soon as its module has been imported, so production code
carries no hook of its own.
"""

from __future__ import annotations

import functools
import importlib.abc
import os
import signal
import sys

_SPEC = os.environ.get("GEMMA3_TEST_KILL_AT", "")


def _wrap(module, name: str, nth: int, when: str, first_arg_suffix: str) -> None:
    original = getattr(module, name)
    calls = 0

    @functools.wraps(original)
    def killing(*args, **kwargs):
        nonlocal calls
        if first_arg_suffix and not (args and str(args[0]).endswith(first_arg_suffix)):
            return original(*args, **kwargs)
        calls += 1
        if calls == nth and when == "before":
            _die()
        out = original(*args, **kwargs)
        if calls == nth and when == "after":
            _die()
        return out

    setattr(module, name, killing)


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.write(f"fault_hooks: SIGKILL at {_SPEC}\n")
    sys.stderr.flush()
    if os.environ.get("GEMMA3_TEST_KILL_GROUP") == "1":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Wraps the target function right after its module executed (the module may be imported lazily, or never)."""

    def __init__(self, module_name: str, patch) -> None:
        self.module_name = module_name
        self.patch = patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.module_name:
            return None
        sys.meta_path.remove(self)
        try:
            from importlib.util import find_spec

            spec = find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader, patch = spec.loader, self.patch

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                patch(module)

        spec.loader = _Loader()
        return spec


def _install(spec: str) -> None:
    module_name, name, nth, when, *suffix = spec.split(":")
    if when not in ("before", "after"):
        raise SystemExit(f"GEMMA3_TEST_KILL_AT: expected 'before' or 'after', got {when!r}")

    def patch(module) -> None:
        _wrap(module, name, int(nth), when, suffix[0] if suffix else "")

    if module_name in sys.modules:
        patch(sys.modules[module_name])
    else:
        sys.meta_path.insert(0, _PatchAfterImport(module_name, patch))


if _SPEC:
    _install(_SPEC)

if os.environ.get("GEMMA3_TEST_FAULTS"):  # tests/faults.py's seeded process-kill schedule (its own module)
    import kill_schedule  # noqa: F401

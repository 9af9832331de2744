"""Lazy package exports: `from gemma3_runtime import AutoBridge` imports torch only when the name is first used, so
torch-free submodules (configs, the launcher's contract) stay cheap to import."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, exports: dict[str, tuple[str, str]]) -> Callable[[str], Any]:
    """A module-level `__getattr__` that resolves `exports[name] = (module, attribute)` on first access."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            module, attr = exports[name]
            return getattr(importlib.import_module(module), attr)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__

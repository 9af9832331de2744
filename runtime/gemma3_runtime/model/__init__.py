"""Gemma 3 on megatron-core. `config` is torch-free; everything else is imported lazily."""

from .config import Gemma3Config, Gemma3ConfigError  # noqa: F401  (torch-free)

_LAZY = {
    "Gemma3ModelProvider": ("gemma3_runtime.model.provider", "Gemma3ModelProvider"),
    "Gemma3Model": ("gemma3_runtime.model.gemma3_model", "Gemma3Model"),
    "KVCache": ("gemma3_runtime.model.kv_cache", "KVCache"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'gemma3_runtime.model' has no attribute {name!r}")


__all__ = ["Gemma3Config", "Gemma3ConfigError", *_LAZY]

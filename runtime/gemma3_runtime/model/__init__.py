"""Gemma 3 on megatron-core. `config` is torch-free; everything else is imported lazily."""

from gemma3_runtime._lazy import lazy_getattr

from .config import Gemma3Config, Gemma3ConfigError  # noqa: F401  (torch-free)

_LAZY = {
    "Gemma3ModelProvider": ("gemma3_runtime.model.provider", "Gemma3ModelProvider"),
    "Gemma3Model": ("gemma3_runtime.model.gemma3_model", "Gemma3Model"),
    "KVCache": ("gemma3_runtime.model.kv_cache", "KVCache"),
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = ["Gemma3Config", "Gemma3ConfigError", *_LAZY]

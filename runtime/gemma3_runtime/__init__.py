"""gemma3_runtime: Gemma 3 on megatron-core (runs inside the job).

Exports are lazy so that torch-free submodules can be imported without pulling torch.
"""

__version__ = "0.1.0"

_LAZY = {
    "AutoBridge": ("gemma3_runtime.bridge.auto_bridge", "AutoBridge"),
    "Gemma3Config": ("gemma3_runtime.model.config", "Gemma3Config"),
    "Gemma3ModelProvider": ("gemma3_runtime.model.provider", "Gemma3ModelProvider"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'gemma3_runtime' has no attribute {name!r}")


__all__ = list(_LAZY)

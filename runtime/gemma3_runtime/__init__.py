"""gemma3_runtime: Gemma 3 on megatron-core (runs inside the job).

Exports are lazy so that torch-free submodules can be imported without pulling torch.
"""

__version__ = "0.1.0"

from gemma3_runtime._lazy import lazy_getattr

_LAZY = {
    "AutoBridge": ("gemma3_runtime.bridge.auto_bridge", "AutoBridge"),
    "Gemma3Config": ("gemma3_runtime.model.config", "Gemma3Config"),
    "Gemma3ModelProvider": ("gemma3_runtime.model.provider", "Gemma3ModelProvider"),
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = list(_LAZY)

"""LoRA / DoRA for Gemma 3 on megatron-core, merge-exact (the update acts before Gemma's post-norms).

`PeftConfig` is torch-free; everything else is imported lazily so that config code never pulls torch.
"""

from gemma3_runtime.peft.config import ALL_TARGETS, PeftConfig

_LAZY = {
    "apply_peft": "gemma3_runtime.peft.apply",
    "merge_peft": "gemma3_runtime.peft.apply",
    "adapted_modules": "gemma3_runtime.peft.apply",
    "reset_dora_magnitudes": "gemma3_runtime.peft.apply",
    "trainable_parameters": "gemma3_runtime.peft.apply",
    "adapter_state_dict": "gemma3_runtime.peft.state",
    "load_adapter_state_dict": "gemma3_runtime.peft.state",
    "adapter_sharded_state_dict": "gemma3_runtime.peft.state",
    "is_adapter_key": "gemma3_runtime.peft.state",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gemma3_runtime.peft' has no attribute {name!r}")


__all__ = ["ALL_TARGETS", "PeftConfig", *_LAZY]

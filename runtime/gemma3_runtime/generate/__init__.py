"""KV-cached text generation for Gemma 3 (docs/CONTRACTS.md): `generate(model, tokenizer, prompts, ...)`.

Pieces: prompts (chat template, left padding, stop ids) -> engine (prefill + static-cache decode steps, CUDA graph)
over a `Decoder` (our megatron model or an HF one) -> sampling -> streaming text. `loading` builds the model from an
HF reference or a Megatron checkpoint for the CLI (`gemma3-runtime generate`).
"""

from __future__ import annotations

_LAZY = {
    "generate": ("gemma3_runtime.generate.api", "generate"),
    "Generation": ("gemma3_runtime.generate.api", "Generation"),
    "Engine": ("gemma3_runtime.generate.engine", "Engine"),
    "SamplingParams": ("gemma3_runtime.generate.sampling", "SamplingParams"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'gemma3_runtime.generate' has no attribute {name!r}")


__all__ = list(_LAZY)

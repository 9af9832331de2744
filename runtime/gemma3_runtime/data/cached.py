"""Data sources -> tokens, through the tokenization cache (token_cache.py): SFT examples and pretraining text.

A source is a plain JSONL file (read by sft.read_jsonl for SFT, exactly as before) or anything hf_datasets.py
reads (Parquet, Arrow, directories, hub ids). Both kinds of SFT rows become tokens through the same
`sft.tokenize_row`, so a Parquet copy of a JSONL file gives the same examples in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gemma3_runtime.data import hf_datasets, token_cache


def _hf_cache(cache_dir: str | None) -> str | None:
    """Where `datasets` keeps its Arrow copy of local files: inside our cache dir, not the user's home."""
    return str(Path(cache_dir) / "hf_datasets") if cache_dir else None


def sft_rows(path: str, data_cfg: Any, key: str, cache_dir: str | None) -> Iterator[dict[str, Any]]:
    if hf_datasets.is_hf_source(path):
        source = hf_datasets.resolve_source(path, key)
        yield from hf_datasets.sft_rows(source, data_cfg.hf_split, data_cfg.hf_subset, key, _hf_cache(cache_dir))
    else:
        from gemma3_runtime.data.sft import read_jsonl

        yield from read_jsonl(path)


def _identity(paths: Sequence[str], data_cfg: Any, key: str) -> list[Any]:
    return [hf_datasets.resolve_source(p, key).identity() for p in paths] + [data_cfg.hf_subset, data_cfg.hf_split]


def sft_examples(paths: Sequence[str], tokenizer: Any, data_cfg: Any, cache_dir: str | None, key: str) -> list[Any]:
    """The tokenized SFT examples of `paths`, in file order (tokenized once per fingerprint when a cache dir is
    known, else in memory)."""
    from gemma3_runtime.data.sft import tokenize_row

    def tokenize() -> list[Any]:
        return [tokenize_row(tokenizer, row) for path in paths for row in sft_rows(path, data_cfg, key, cache_dir)]

    if not cache_dir:
        return tokenize()
    parts = {
        "kind": "sft",
        "sources": _identity(paths, data_cfg, key),
        "tokenizer": token_cache.tokenizer_identity(tokenizer),
    }
    entry = Path(cache_dir) / f"sft-{token_cache.fingerprint(parts)}.npz"

    def prepare() -> None:
        examples = tokenize()
        token_cache.save_examples(entry, examples)
        token_cache.write_manifest(entry.with_suffix(".json"), paths, parts, {"examples": len(examples)})

    token_cache.prepare_once(entry, prepare, f"SFT data {', '.join(paths)}")
    return token_cache.load_examples(entry)


def documents(path: str, data_cfg: Any, key: str, cache_dir: str | None) -> tuple[Iterator[str], int]:
    """(texts, count) of one pretraining source (JSONL too goes through `datasets` here)."""
    source = hf_datasets.resolve_source(path, key)
    return hf_datasets.texts(
        source, data_cfg.hf_split, data_cfg.hf_subset, data_cfg.text_key, key, _hf_cache(cache_dir)
    )


def text_prefix(paths: Sequence[str], tokenizer: Any, data_cfg: Any, cache_dir: str, key: str) -> str:
    """The Megatron indexed prefix (<cache_dir>/text-<fp>) holding the documents of `paths`, tokenized once."""
    from gemma3_runtime.data.indexed import write_indexed_documents

    parts = {
        "kind": "text",
        "text_key": data_cfg.text_key,
        "sources": _identity(paths, data_cfg, key),
        "tokenizer": token_cache.tokenizer_identity(tokenizer),
    }
    prefix = Path(cache_dir) / f"text-{token_cache.fingerprint(parts)}"

    def all_documents() -> Iterator[str]:
        for path in paths:
            yield from documents(path, data_cfg, key, cache_dir)[0]

    def prepare() -> None:
        count, tokens = write_indexed_documents(all_documents(), prefix, tokenizer, ", ".join(paths))
        token_cache.write_manifest(prefix.with_suffix(".json"), paths, parts, {"documents": count, "tokens": tokens})

    token_cache.prepare_once(Path(f"{prefix}.idx"), prepare, f"text data {', '.join(paths)}")
    return str(prefix)

"""DataConfig -> (train dataset, validation dataset). Every dataset maps an index to a dict of numpy arrays
(input_ids, labels, loss_mask, position_ids, segment_ids), each of seq_length."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma3_runtime.errors import UserInputError

BUNDLED_PREFIX = "bundled:"


@dataclass
class Datasets:
    train: Any
    valid: Any | None
    #: SFT/mock: we shuffle per epoch; indexed: GPTDataset already shuffles, so its order is used as is
    shuffle: bool


def resolve_sft_paths(paths: Sequence[str], key: str = "data.data_paths") -> tuple[list[str], list[str]]:
    """Expand `bundled:NAME` into the packaged train file (and remember its held-out file as validation); check
    that every other path is a JSONL file or a source `datasets` reads (hf_datasets.py)."""
    from gemma3_runtime.data import hf_datasets, synthetic

    train, valid = [], []
    for p in paths:
        if p.startswith(BUNDLED_PREFIX):
            name = p[len(BUNDLED_PREFIX) :]
            if name != synthetic.NAME:
                raise UserInputError(f"{key}: {p!r} is unknown, expected {BUNDLED_PREFIX}{synthetic.NAME}")
            train.append(str(synthetic.bundled_path("train")))
            valid.append(str(synthetic.bundled_path("heldout")))
        elif hf_datasets.is_hf_source(p):
            hf_datasets.resolve_source(p, key)
            train.append(p)
        else:
            if not Path(p).is_file():
                expected = (
                    "a JSONL file"
                    if p.endswith((".jsonl", ".json"))
                    else "a JSONL/Parquet/Arrow file or directory, or hf:OWNER/NAME"
                )
                raise UserInputError(f"{key}: {p!r} does not exist (expected {expected})")
            train.append(p)
    return train, valid


def load_tokenizer(path: str | None, key: str = "data.tokenizer") -> Any:
    if not path:
        raise UserInputError(
            f"{key} is not set (expected an HF tokenizer directory; finetuning takes the "
            f"pretrained checkpoint's tokenizer/ by default)"
        )
    if not os.path.isdir(path):
        raise UserInputError(f"{key}: {path!r} is not a directory (expected an HF tokenizer directory)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises many types for a bad directory
        raise UserInputError(f"{key}: cannot load a tokenizer from {path!r} ({type(exc).__name__})") from None


def build_datasets(
    data_cfg: Any,
    seed: int,
    vocab_size: int,
    tokenizer: Any | None,
    train_samples: int,
    valid_samples: int,
    cache_dir: str | None,
) -> Datasets:
    kind = data_cfg.kind
    if kind == "mock":
        from gemma3_runtime.data.mock import MockDataset

        vocab = data_cfg.mock_vocab_size or vocab_size
        return Datasets(
            MockDataset(vocab, data_cfg.seq_length, seed),
            MockDataset(vocab, data_cfg.seq_length, seed + 1),
            shuffle=False,
        )
    if not data_cfg.data_paths:
        raise UserInputError(f"data.data_paths is empty (data.kind={kind} needs at least one path)")
    if kind == "indexed":
        from gemma3_runtime.data.indexed import GPTDatasetAdapter, build_gpt_datasets

        train, valid, _ = build_gpt_datasets(
            data_cfg.data_paths,
            data_cfg.split,
            data_cfg.seq_length,
            seed,
            tokenizer,
            (train_samples, valid_samples, 0),
            cache_dir,
        )
        return Datasets(
            GPTDatasetAdapter(train), GPTDatasetAdapter(valid) if valid is not None else None, shuffle=False
        )
    if kind == "text":
        from gemma3_runtime.data.cached import text_prefix
        from gemma3_runtime.data.indexed import GPTDatasetAdapter, build_gpt_datasets

        workdir = data_cfg.cache_dir or cache_dir or _private_cache_dir()
        prefix = text_prefix(data_cfg.data_paths, tokenizer, data_cfg, workdir, "data.data_paths")
        train, valid, _ = build_gpt_datasets(
            [prefix], data_cfg.split, data_cfg.seq_length, seed, tokenizer, (train_samples, valid_samples, 0), workdir
        )
        return Datasets(
            GPTDatasetAdapter(train), GPTDatasetAdapter(valid) if valid is not None else None, shuffle=False
        )
    return _sft_datasets(data_cfg, seed, tokenizer, data_cfg.cache_dir or cache_dir)


def _sft_datasets(data_cfg: Any, seed: int, tokenizer: Any, cache_dir: str | None) -> Datasets:
    """SFT examples (tokenized once per fingerprint when there is a cache dir) -> packed train/valid datasets.
    Without data.valid_paths the examples are shuffled with the seed and the first valid_fraction held out."""
    from gemma3_runtime.data.cached import sft_examples
    from gemma3_runtime.data.sft import SFTDataset

    train_paths, bundled_valid = resolve_sft_paths(data_cfg.data_paths)
    valid_paths = list(data_cfg.valid_paths or bundled_valid)
    resolve_sft_paths(valid_paths, "data.valid_paths")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seq, packing = data_cfg.seq_length, data_cfg.packing
    examples = sft_examples(train_paths, tokenizer, data_cfg, cache_dir, "data.data_paths")
    if valid_paths:
        valid_examples = sft_examples(valid_paths, tokenizer, data_cfg, cache_dir, "data.valid_paths")
        train = SFTDataset(examples, seq, pad, packing, seed)
        valid = SFTDataset(valid_examples, seq, pad, packing, seed)
        return Datasets(train, valid, shuffle=True)
    random.Random(seed).shuffle(examples)  # the same permutation the rows would get: it depends on the count only
    n_valid = int(len(examples) * data_cfg.valid_fraction)
    train = SFTDataset(examples[n_valid:], seq, pad, packing, seed)
    valid = SFTDataset(examples[:n_valid], seq, pad, packing, seed) if n_valid else None
    return Datasets(train, valid, shuffle=True)


def _private_cache_dir() -> str:
    """A run without a save dir or data.cache_dir tokenizes text into a fresh temporary directory (never reused)."""
    import tempfile

    return tempfile.mkdtemp(prefix="gemma3-data-")

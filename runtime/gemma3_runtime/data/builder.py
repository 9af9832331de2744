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


def resolve_sft_paths(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """Expand `bundled:NAME` into the packaged train file (and remember its held-out file as validation)."""
    from gemma3_runtime.data import synthetic

    train, valid = [], []
    for p in paths:
        if p.startswith(BUNDLED_PREFIX):
            name = p[len(BUNDLED_PREFIX) :]
            if name != synthetic.NAME:
                raise UserInputError(f"data.data_paths: {p!r} is unknown, expected {BUNDLED_PREFIX}{synthetic.NAME}")
            train.append(str(synthetic.bundled_path("train")))
            valid.append(str(synthetic.bundled_path("heldout")))
        else:
            if not Path(p).is_file():
                raise UserInputError(f"data.data_paths: {p!r} does not exist (expected a JSONL file)")
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
    # sft
    from gemma3_runtime.data.sft import SFTDataset, build_sft_dataset, read_jsonl, tokenize_row

    train_paths, bundled_valid = resolve_sft_paths(data_cfg.data_paths)
    valid_paths = list(data_cfg.valid_paths or bundled_valid)
    for p in valid_paths:
        if not Path(p).is_file():
            raise UserInputError(f"data.valid_paths: {p!r} does not exist (expected a JSONL file)")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if valid_paths:
        train = build_sft_dataset(train_paths, tokenizer, data_cfg.seq_length, data_cfg.packing, seed)
        valid = build_sft_dataset(valid_paths, tokenizer, data_cfg.seq_length, data_cfg.packing, seed)
    else:
        rows = [r for p in train_paths for r in read_jsonl(p)]
        random.Random(seed).shuffle(rows)
        n_valid = int(len(rows) * data_cfg.valid_fraction)
        examples = [tokenize_row(tokenizer, r) for r in rows]
        train = SFTDataset(examples[n_valid:], data_cfg.seq_length, pad, data_cfg.packing, seed)
        valid = SFTDataset(examples[:n_valid], data_cfg.seq_length, pad, data_cfg.packing, seed) if n_valid else None
    return Datasets(train, valid, shuffle=True)

"""Megatron indexed datasets (.bin/.idx): writing them from JSONL text, and reading them through megatron-core's
GPTDataset / BlendedMegatronDatasetBuilder (so blends, splits and the index caches are megatron-core's own).

Documents are tokenized with the model's tokenizer as [bos] + text + [eos]; GPTDataset concatenates documents into
samples of seq_length (+1) tokens, as Megatron pretraining does (attention and position ids run across document
boundaries there, the standard for pretraining).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gemma3_runtime.errors import UserInputError


class MegatronTokenizerView:
    """The few attributes megatron-core's GPTDataset reads from a tokenizer, taken from an HF tokenizer."""

    def __init__(self, hf_tokenizer: Any) -> None:
        self.vocab_size = len(hf_tokenizer)
        self.eod = hf_tokenizer.eos_token_id
        self.pad = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0
        self.bos = hf_tokenizer.bos_token_id
        self.special_tokens_dict = {"eos_token": self.eod, "pad_token": self.pad, "bos_token": self.bos}
        self.unique_identifiers = {"class": "gemma3", "vocab_size": self.vocab_size}


def write_indexed_dataset(
    input_jsonl: str | Path,
    output_prefix: str | Path,
    tokenizer: Any,
    text_key: str = "text",
    show_progress: bool = True,
) -> tuple[int, int]:
    """JSONL rows with `text_key` -> <prefix>.bin/.idx. Written under temporary names and renamed when complete.

    Returns (documents, tokens).
    """
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    input_jsonl, output_prefix = Path(input_jsonl), str(output_prefix)
    if not input_jsonl.is_file():
        raise UserInputError(f"--input {str(input_jsonl)!r} does not exist (expected a JSONL file)")
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    if not os.path.isdir(out_dir):
        raise UserInputError(f"--output-prefix {output_prefix!r}: directory {out_dir!r} does not exist")
    tmp_prefix = f"{output_prefix}.tmp-{os.getpid()}"
    dtype = np.int32 if len(tokenizer) > np.iinfo(np.uint16).max + 1 else np.uint16
    builder = IndexedDatasetBuilder(tmp_prefix + ".bin", dtype=dtype)
    documents = tokens = 0
    total_bytes = input_jsonl.stat().st_size
    progress = _progress(total_bytes, show_progress)
    try:
        with open(input_jsonl) as f:
            for lineno, line in enumerate(f, 1):
                progress.update(len(line.encode()))
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    text = row[text_key]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UserInputError(
                        f"{input_jsonl}:{lineno}: expected a JSON object with a {text_key!r} string"
                    ) from None
                ids = tokenizer(str(text), add_special_tokens=False)["input_ids"]
                doc = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + list(ids)
                doc.append(tokenizer.eos_token_id)
                builder.add_item(torch.tensor(doc, dtype=torch.int64))
                builder.end_document()
                documents += 1
                tokens += len(doc)
        if documents == 0:
            raise UserInputError(f"{input_jsonl}: no documents (expected JSONL rows with {text_key!r})")
        builder.finalize(tmp_prefix + ".idx")
        # .bin first, .idx last: a prefix counts as complete when its .idx exists
        os.replace(tmp_prefix + ".bin", output_prefix + ".bin")
        os.replace(tmp_prefix + ".idx", output_prefix + ".idx")
    finally:
        progress.close()
        for suffix in (".bin", ".idx"):
            if os.path.exists(tmp_prefix + suffix):
                os.remove(tmp_prefix + suffix)
    return documents, tokens


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=not enabled)


def parse_blend(data_paths: Sequence[str]) -> tuple[list[str], list[float] | None]:
    """["a", "b"] -> equal weights; ["0.7", "a", "0.3", "b"] -> weighted (Megatron's --data-path convention)."""
    paths = list(data_paths)
    try:
        weights = [float(x) for x in paths[0::2]]
        prefixes = paths[1::2]
        if len(weights) == len(prefixes) and prefixes:
            return prefixes, weights
    except ValueError:
        pass
    return paths, None


def check_prefixes(prefixes: Sequence[str], key: str) -> None:
    for prefix in prefixes:
        for suffix in (".bin", ".idx"):
            if not os.path.isfile(prefix + suffix):
                raise UserInputError(
                    f"{key}: {prefix + suffix!r} does not exist "
                    f"(expected a prefix written by `gemma3-runtime prepare-data`)"
                )


def build_gpt_datasets(
    data_paths: Sequence[str],
    split: str,
    seq_length: int,
    seed: int,
    tokenizer: Any,
    num_samples: tuple[int, int, int],
    cache_dir: str | None,
) -> list[Any]:
    """[train, valid, test] megatron-core GPTDatasets (None where a split is empty)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    prefixes, weights = parse_blend(data_paths)
    check_prefixes(prefixes, "data.data_paths")
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=(prefixes, weights),
        split=split,
        tokenizer=MegatronTokenizerView(tokenizer),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        path_to_cache=cache_dir,
    )
    return BlendedMegatronDatasetBuilder(GPTDataset, list(num_samples), lambda: True, config).build()


class GPTDatasetAdapter:
    """Maps megatron-core's sample dict onto ours (input_ids, labels, loss_mask, position_ids, segment_ids)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        sample = self.dataset[index]
        tokens = np.asarray(sample["tokens"], dtype=np.int64)
        return {
            "input_ids": tokens,
            "labels": np.asarray(sample["labels"], dtype=np.int64),
            "loss_mask": np.asarray(sample["loss_mask"], dtype=np.float32),
            "position_ids": np.asarray(sample["position_ids"], dtype=np.int64),
            "segment_ids": np.ones_like(tokens),
        }

"""Tokenize a dataset once per fingerprint, cache the tokens next to the run's data, and reuse them on every start.

The fingerprint is a hash of everything the tokens depend on: the sources' identities (hf_datasets.Source.identity:
file paths, sizes and modification times, or the hub id), the subset and split, the tokenizer (its vocabulary and
rules, special token ids and chat template, by content) and the format (SFT rows, or pretraining text with its
column). Sequence length, packing and the shuffle seed are applied after the cache (SFTDataset / GPTDataset), so
changing them reuses the tokens.

Cache entries live in data.cache_dir (default <checkpoint.save>/data_cache): `sft-<fp>.npz` (the tokenized SFT
examples, concatenated, with offsets) and `text-<fp>.bin/.idx` (a Megatron indexed dataset) - each with a
`.json` manifest naming its sources. Entries are written under temporary names and renamed when complete.

Every rank appends what it did for an entry (hit / prepared / waited) to `<cache_dir>/events.jsonl`, so a run's
cache use can be checked after the fact (each line one small O_APPEND write).

In a distributed run, rank 0 prepares a missing entry while the other ranks wait for it (a broadcast that also
carries rank 0's error, so a bad file fails every rank with the same line instead of leaving them waiting); a rank
that still does not see the entry afterwards (a cache dir that is not shared between nodes) prepares its own copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gemma3_runtime.errors import UserInputError

log = logging.getLogger("gemma3_runtime.data")

#: bump when the way rows become tokens changes, so old cache entries are not reused
FORMAT_VERSION = 1

HIT, PREPARED, WAITED = "hit", "prepared", "waited"


def tokenizer_identity(tokenizer: Any) -> str:
    """A hash of the tokenizer's content: vocabulary and rules (the fast tokenizer's JSON), special ids, template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(backend.to_str().encode() if backend is not None else str(tokenizer.get_vocab()).encode())
    for value in (
        len(tokenizer),
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        getattr(tokenizer, "chat_template", None),
    ):
        digest.update(repr(value).encode())
    return digest.hexdigest()


def fingerprint(parts: dict[str, Any]) -> str:
    payload = json.dumps({"format_version": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _distributed() -> Any | None:
    """torch.distributed when a process group of more than one rank exists, else None."""
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def prepare_once(marker: Path, prepare: Callable[[], None], what: str) -> str:
    """Make sure the cache entry whose completion `marker` shows exists: HIT (it did), PREPARED (this rank made it)
    or WAITED (rank 0 made it while this rank waited). Logs which one."""
    dist = _distributed()
    rank = dist.get_rank() if dist else 0
    existed = marker.exists()
    outcome, error, failure = HIT, None, None
    if rank == 0 and not existed:
        try:
            _timed_prepare(prepare, marker, what)
            outcome = PREPARED
        except UserInputError as exc:
            error = str(exc)
        except Exception as exc:  # re-raised below, after the other ranks have heard of it
            failure, error = exc, f"data cache: rank 0 failed to prepare {what} ({type(exc).__name__})"
    if dist is not None:  # every rank, hit or not: the others wait here until rank 0 has the entry (or an error)
        message = [error]
        dist.broadcast_object_list(message, src=0)
        error = message[0]
    if failure is not None:
        raise failure
    if error is not None:
        raise UserInputError(error)
    if rank != 0 and not existed:
        outcome = WAITED
        if not marker.exists():  # the cache dir is not shared with rank 0: this node makes its own copy
            _timed_prepare(prepare, marker, what)
            outcome = PREPARED
    if outcome != PREPARED:
        log.info("data cache hit: %s (%s)", marker, what)
    _record_event(marker, outcome, rank)
    return outcome


def _record_event(marker: Path, outcome: str, rank: int) -> None:
    line = json.dumps({"entry": marker.name, "outcome": outcome, "rank": rank, "time": round(time.time(), 3)})
    with open(marker.parent / "events.jsonl", "a") as f:
        f.write(line + "\n")


def read_events(cache_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(cache_dir) / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _timed_prepare(prepare: Callable[[], None], marker: Path, what: str) -> None:
    started = time.time()
    marker.parent.mkdir(parents=True, exist_ok=True)
    prepare()
    log.info("data cache: tokenized %s into %s in %.1f s", what, marker, time.time() - started)


def write_manifest(path: Path, sources: Sequence[str], parts: dict[str, Any], counts: dict[str, int]) -> None:
    record = {"sources": list(sources), "created": time.time(), **counts, "fingerprint_parts": parts}
    _atomic_write_bytes(path, (json.dumps(record, indent=1, sort_keys=True, default=str) + "\n").encode())


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---- SFT examples --------------------------------------------------------------------------------------------------
def save_examples(path: Path, examples: Sequence[Any]) -> None:
    """TokenizedExamples -> one .npz (concatenated arrays + offsets), written atomically."""
    lengths = np.array([len(e.input_ids) for e in examples], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = [t for e in examples for t in e.input_ids]
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    np.savez(
        tmp,
        input_ids=np.asarray(flat, dtype=np.int64),
        labels=np.asarray([t for e in examples for t in e.labels], dtype=np.int64),
        loss_mask=np.asarray([m for e in examples for m in e.loss_mask], dtype=np.int8),
        offsets=offsets,
    )
    os.replace(tmp, path)


def load_examples(path: Path) -> list[Any]:
    from gemma3_runtime.data.sft import TokenizedExample

    with np.load(path) as arrays:
        input_ids, labels = arrays["input_ids"].tolist(), arrays["labels"].tolist()
        loss_mask, offsets = arrays["loss_mask"].tolist(), arrays["offsets"].tolist()
    return [
        TokenizedExample(input_ids[a:b], labels[a:b], loss_mask[a:b])
        for a, b in zip(offsets[:-1], offsets[1:], strict=True)
    ]

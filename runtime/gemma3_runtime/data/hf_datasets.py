"""Hugging Face `datasets` as a data source: local JSONL / Parquet / Arrow files and directories, and hub ids.

A source is one entry of data.data_paths (or `prepare-data --input`):
- a file: `.jsonl`/`.json` (JSON lines), `.parquet`, `.arrow` (an Arrow stream file, as `datasets` writes them);
- a directory: either one written by `Dataset.save_to_disk` (it has `state.json`), or a directory of data files of
  one of the formats above (all of them, sorted by name, are one dataset);
- `hf:OWNER/NAME`: a dataset on the Hugging Face hub, read through `datasets.load_dataset` and so through the
  HF_HOME cache. Without network set HF_HUB_OFFLINE=1 (or HF_DATASETS_OFFLINE=1): `datasets` then loads the copy it
  prepared earlier under HF_HOME/datasets. data.hf_subset and data.hf_split pick the configuration and split.

Rows come back as plain dicts in the dataset's order; the caller decides what a row must hold (a text column for
pretraining, chat `messages` or prompt/completion for SFT).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma3_runtime.errors import UserInputError

HUB_PREFIX = "hf:"
#: file suffix -> `datasets` packaged builder
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}


@dataclass(frozen=True)
class Source:
    """One resolved data source: what to load and what identifies its content (for the tokenization cache)."""

    spec: str
    #: "hub", "saved" (save_to_disk directory) or a packaged builder name ("json", "parquet", "arrow")
    loader: str
    files: tuple[str, ...] = ()

    def identity(self) -> list[Any]:
        """What names this source's content: the hub id, or each file's absolute path, size and modification time
        (a changed file makes a new cache entry; a hub dataset is named by id, subset and split)."""
        if self.loader == "hub":
            return [self.spec]
        out: list[Any] = [self.loader]
        for name in self.files:
            stat = os.stat(name)
            out.append([os.path.abspath(name), stat.st_size, stat.st_mtime_ns])
        return out


def is_hf_source(path: str) -> bool:
    """True for a source only `datasets` reads (everything but a plain JSONL file and `bundled:`)."""
    if path.startswith(HUB_PREFIX):
        return True
    p = Path(path)
    return p.is_dir() or (p.suffix.lower() in FILE_BUILDERS and p.suffix.lower() not in (".jsonl", ".json"))


def resolve_source(path: str, key: str) -> Source:
    """A data path -> Source; a path that is none of the supported kinds is one UserInputError naming `key`."""
    if path.startswith(HUB_PREFIX):
        repo_id = path[len(HUB_PREFIX) :]
        parts = repo_id.split("/")
        if not repo_id or len(parts) > 2 or not all(parts):
            raise UserInputError(f"{key}: {path!r} is not a hub dataset id (expected hf:OWNER/NAME)")
        return Source(spec=path, loader="hub")
    p = Path(path)
    if p.is_file():
        builder = FILE_BUILDERS.get(p.suffix.lower())
        if builder is None:
            raise UserInputError(f"{key}: {path!r} is not a {'/'.join(FILE_BUILDERS)} file")
        return Source(spec=path, loader=builder, files=(str(p),))
    if p.is_dir():
        if (p / "state.json").is_file() and (p / "dataset_info.json").is_file():
            files = tuple(sorted(str(f) for f in p.iterdir() if f.is_file()))
            return Source(spec=path, loader="saved", files=files)
        found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in FILE_BUILDERS)
        builders = {FILE_BUILDERS[f.suffix.lower()] for f in found}
        if len(builders) != 1:
            what = "mixes formats" if builders else "holds no data files"
            raise UserInputError(
                f"{key}: directory {path!r} {what} (expected {'/'.join(FILE_BUILDERS)} files of one format, or a "
                f"directory written by datasets' save_to_disk)"
            )
        return Source(spec=path, loader=builders.pop(), files=tuple(str(f) for f in found))
    raise UserInputError(
        f"{key}: {path!r} does not exist (expected a JSONL/Parquet/Arrow file or directory, or hf:OWNER/NAME)"
    )


def load_dataset(source: Source, split: str, subset: str | None, key: str, cache_dir: str | None = None) -> Any:
    """The source as a `datasets.Dataset`. `cache_dir`: where `datasets` keeps the Arrow copy of local files
    (hub ids always use HF_HOME's cache, so offline mode finds what was downloaded before)."""
    import datasets

    try:
        if source.loader == "hub":
            return datasets.load_dataset(source.spec[len(HUB_PREFIX) :], subset, split=split)
        if source.loader == "saved":
            loaded = datasets.load_from_disk(source.spec)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise UserInputError(f"{key}: {source.spec!r} has no split {split!r} (it has {sorted(loaded)})")
                loaded = loaded[split]
            return loaded
        return datasets.load_dataset(source.loader, data_files=list(source.files), split="train", cache_dir=cache_dir)
    except UserInputError:
        raise
    except (ConnectionError, FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserInputError(
            f"{key}: cannot load {source.spec!r} ({type(exc).__name__}: {first_line[:200]}); for a hub id without "
            f"network set HF_HUB_OFFLINE=1 and make sure HF_HOME holds the dataset"
        ) from None
    except Exception as exc:  # pyarrow and the builders raise many types for a malformed file
        raise UserInputError(f"{key}: cannot read {source.spec!r} ({type(exc).__name__})") from None


def _check_columns(dataset: Any, source: Source, needed: tuple[tuple[str, ...], ...], key: str) -> None:
    """The dataset must have all columns of at least one of the `needed` groups."""
    columns = set(dataset.column_names)
    if not any(set(group) <= columns for group in needed):
        expected = " or ".join("+".join(group) for group in needed)
        raise UserInputError(f"{key}: {source.spec!r} has columns {sorted(columns)[:20]} (expected {expected})")


def sft_rows(
    source: Source, split: str, subset: str | None, key: str, cache_dir: str | None = None
) -> Iterator[dict[str, Any]]:
    """SFT rows (chat `messages`, or `prompt` + `completion`) as the JSONL reader returns them."""
    dataset = load_dataset(source, split, subset, key, cache_dir)
    _check_columns(dataset, source, (("messages",), ("prompt", "completion")), key)
    for index, row in enumerate(dataset):
        clean = {k: v for k, v in row.items() if v is not None}  # a column a row does not use reads as None
        if "messages" in clean:
            clean["messages"] = [{k: v for k, v in m.items() if v is not None} for m in clean["messages"]]
        elif not ("prompt" in clean and "completion" in clean):
            raise UserInputError(
                f"{key}: {source.spec!r} row {index}: expected 'messages', or 'prompt' and 'completion'"
            )
        yield clean


def texts(
    source: Source, split: str, subset: str | None, text_key: str, key: str, cache_dir: str | None = None
) -> tuple[Iterator[str], int]:
    """(the documents of a pretraining source, their count): the `text_key` column as strings."""
    dataset = load_dataset(source, split, subset, key, cache_dir)
    _check_columns(dataset, source, ((text_key,),), key)
    column = dataset.select_columns([text_key])
    return (str(row[text_key]) for row in column if row[text_key] is not None), len(column)

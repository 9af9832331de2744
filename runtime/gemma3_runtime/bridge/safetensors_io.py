"""Streaming safetensors in (one tensor at a time, memory-mapped) and out (shard by shard).

Reading never materialises the whole checkpoint: `HFTensorReader` reads one tensor (or just a slice of it) when
asked, opening (memory-mapping) its shard only for that read: mapped pages that stay mapped count in the process's
RSS, so a long-lived handle would add the whole checkpoint's size to peak memory during an import. Writing buffers
at most `max_shard_bytes` before a shard goes to disk; shard names need the final count, so shards are renamed once
the last one is written. Callers write into a temporary directory and rename it when complete, so a crash never
leaves something that looks like a checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gemma3_runtime.errors import StorageFullError, UserInputError, storage_full_reason

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3


class HFTensorReader:
    """Name -> tensor access over an HF directory's safetensors files (single file or sharded with an index)."""

    def __init__(self, hf_dir: Path) -> None:
        self.hf_dir = Path(hf_dir)
        self._shapes: dict[str, list[int]] = {}
        self.weight_map = self._read_weight_map()

    def _read_weight_map(self) -> dict[str, str]:
        index = self.hf_dir / INDEX_FILE
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise UserInputError(
                    f"{index}: not a valid safetensors index (expected JSON with 'weight_map'): {exc}"
                ) from None
            for file_name in sorted(set(weight_map.values())):
                with self._open(file_name):  # validates every shard up front (truncation, missing file)
                    pass
            return dict(weight_map)
        single = self.hf_dir / SINGLE_FILE
        if single.exists():
            with self._open(SINGLE_FILE) as handle:
                return {name: SINGLE_FILE for name in handle.keys()}  # noqa: SIM118 - safe_open is not iterable
        raise UserInputError(f"{self.hf_dir}: no {SINGLE_FILE} or {INDEX_FILE} (expected HF safetensors weights)")

    def _open(self, file_name: str) -> Any:
        path = self.hf_dir / file_name
        if not path.exists():
            raise UserInputError(f"{path}: safetensors shard listed in {INDEX_FILE} does not exist")
        try:
            return safe_open(str(path), framework="pt")
        except SafetensorError as exc:
            raise UserInputError(f"{path}: not a readable safetensors file (truncated or corrupt: {exc})") from None

    def names(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def _source(self, name: str) -> Any:
        if name not in self.weight_map:
            raise UserInputError(f"{self.hf_dir}: tensor {name!r} is missing from the checkpoint")
        return self._open(self.weight_map[name])

    def get(self, name: str) -> torch.Tensor:
        try:
            with self._source(name) as handle:
                return handle.get_tensor(name)
        except SafetensorError as exc:
            raise UserInputError(f"{self.hf_dir / self.weight_map[name]}: cannot read {name!r}: {exc}") from None

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a tensor without reading the rest (rows past the end are simply absent)."""
        try:
            with self._source(name) as handle:
                return handle.get_slice(name)[start:stop]
        except SafetensorError as exc:
            raise UserInputError(f"{self.hf_dir / self.weight_map[name]}: cannot read {name!r}: {exc}") from None

    def shape(self, name: str) -> list[int]:
        if name not in self._shapes:
            with self._source(name) as handle:
                self._shapes[name] = list(handle.get_slice(name).get_shape())
        return self._shapes[name]

    def close(self) -> None:
        """Nothing stays open between reads; kept so callers can use the reader as a context manager."""

    def __enter__(self) -> HFTensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardedSafetensorsWriter:
    """Writes (name, tensor) pairs as `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`."""

    def __init__(self, out_dir: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
        self.out_dir = Path(out_dir)
        self.max_shard_bytes = max_shard_bytes
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._shards: list[tuple[str, list[str]]] = []  # (temporary file name, tensor names)
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffer_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._buffer[name] = tensor.detach().to("cpu").contiguous()
        self._buffer_bytes += nbytes
        self.total_bytes += nbytes

    def add_all(self, items: Iterable[tuple[str, torch.Tensor]]) -> None:
        for name, tensor in items:
            self.add(name, tensor)

    def _flush(self) -> None:
        if not self._buffer:
            return
        tmp_name = f".shard-{len(self._shards):05d}.safetensors.tmp"
        try:
            save_file(self._buffer, str(self.out_dir / tmp_name), metadata={"format": "pt"})
        except Exception as exc:  # safetensors reports a full disk as its own error
            reason = storage_full_reason(exc, self.out_dir, self._buffer_bytes)
            if reason is None:
                raise
            raise StorageFullError(f"{reason}; nothing was written under the final name") from None
        self._shards.append((tmp_name, list(self._buffer)))
        self._buffer = {}
        self._buffer_bytes = 0

    def close(self) -> list[str]:
        """Flush, give shards their final names and write the index; returns the shard file names."""
        self._flush()
        count = len(self._shards)
        weight_map: dict[str, str] = {}
        final_names = []
        for i, (tmp_name, names) in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            os.replace(self.out_dir / tmp_name, self.out_dir / final)
            final_names.append(final)
            weight_map.update({n: final for n in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return final_names

"""Read a W&B run file (`run-<id>.wandb`, what an offline run leaves) without network: the records of its
LevelDB-style log (7-byte file header ":W&B" + magic + version; 32 KiB blocks of chunks with a 7-byte header:
crc32, length, type FULL/FIRST/MIDDLE/LAST), each a `wandb_internal_pb2.Record` protobuf.

Format as written by wandb's datastore (wandb/sdk/internal/datastore.py in wandb < 0.19, core/pkg/leveldb in
wandb-core); the CRCs are not checked here.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

FILE_HEADER = 7
BLOCK = 32768
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pending, pos = [], b"", FILE_HEADER
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def run_id_and_steps(path: Path) -> tuple[str, list[int]]:
    """(the run id, the `_step` of every history row) of a run file."""
    run_id, steps = None, []
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
        elif kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if key == "_step":
                    steps.append(int(json.loads(item.value_json)))
    return run_id, steps

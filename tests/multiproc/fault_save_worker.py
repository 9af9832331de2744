"""torchrun worker for test_fault_save_ranks.py: rank 0's commit of a 2-rank checkpoint save fails alone."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import torch


def rank0_commit_fails(save_dir: str, out_dir: str) -> None:
    """Save iteration 1, then iteration 2 with rank 0's tracker write failing with ENOSPC; every rank records what
    its save_checkpoint raised."""
    from megatron.core.dist_checkpointing import ShardedTensor

    from gemma3_runtime.checkpoint import io as ckpt_io

    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()

    def state(value: float) -> dict:
        return {"w": ShardedTensor.from_rank_offsets("w", torch.full((4,), value), (0, rank, 2), replica_id=0)}

    ckpt_io.save_checkpoint(save_dir, 1, state(1.0), {"model": {}})
    real_write = ckpt_io.write_text_atomic

    def full_disk(path: Path, text: str) -> None:
        if path.name == ckpt_io.TRACKER_FILE:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, text)

    ckpt_io.write_text_atomic = full_disk
    try:
        ckpt_io.save_checkpoint(save_dir, 2, state(2.0), {"model": {}})
        raised = None
    except Exception as exc:  # noqa: BLE001 - recorded for the test to check
        raised = {"type": exc.__class__.__name__, "message": str(exc)}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(raised))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()

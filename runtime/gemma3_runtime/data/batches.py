"""Which samples make up each step, and the micro-batches a data-parallel rank feeds the model.

The data position is one number, `consumed_samples`: global batch k holds global sample indices
[k*GBS, (k+1)*GBS), each mapped through a per-epoch seeded permutation of the dataset. DP rank r takes the r-th
contiguous slice of GBS/DP samples and cuts it into micro-batches of MBS. So a resumed run (same consumed_samples)
and a run with another DP size see exactly the same samples in each step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from gemma3_runtime.errors import UserInputError


class EpochShuffledIndex:
    """Global sample index -> dataset index, reshuffled each epoch with (seed, epoch)."""

    def __init__(self, dataset_size: int, seed: int, shuffle: bool) -> None:
        if dataset_size <= 0:
            raise UserInputError("the dataset is empty")
        self.size, self.seed, self.shuffle = dataset_size, seed, shuffle
        self._epoch, self._perm = -1, None

    def __call__(self, global_index: int) -> int:
        epoch, pos = divmod(global_index, self.size)
        if not self.shuffle:
            return pos
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            self._epoch = epoch
        return int(self._perm[pos])


def collate(samples: list[dict[str, np.ndarray]], device: torch.device) -> dict[str, torch.Tensor]:
    """Stack samples into one micro-batch on `device`, without making the host wait for the GPU.

    WHY: a copy from pageable host memory first waits for every kernel already queued on the stream, so loading each
    micro-batch that way stalls the host until the previous micro-batch's backward has finished (the host then
    trails the GPU instead of queueing ahead); on CUDA the arrays go through pinned memory, copied non-blocking.
    `segment_ids` that are all 1 (one document per row, no padding - every pretraining batch) are dropped here, on
    the host: the model then runs plain causal attention, and nothing tests them on the device per micro-batch.
    """
    arrays = {k: np.stack([s[k] for s in samples]) for k in samples[0]}
    if "segment_ids" in arrays and bool((arrays["segment_ids"] == 1).all()):
        del arrays["segment_ids"]
    if device.type == "cuda":
        return {k: torch.from_numpy(v).pin_memory().to(device, non_blocking=True) for k, v in arrays.items()}
    return {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}


def microbatches(
    dataset: Any,
    index: EpochShuffledIndex,
    first_sample: int,
    global_batch_size: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
    device: torch.device,
) -> Iterator[dict[str, torch.Tensor]]:
    """The micro-batches of one global batch that start at global sample `first_sample`, for one DP rank."""
    per_rank = global_batch_size // dp_size
    start = first_sample + dp_rank * per_rank
    for m in range(0, per_rank, micro_batch_size):
        yield collate([dataset[index(start + m + j)] for j in range(micro_batch_size)], device)


def count_loss_tokens(dataset: Any, index: EpochShuffledIndex, first_sample: int, global_batch_size: int) -> int:
    return int(sum(dataset[index(first_sample + j)]["loss_mask"].sum() for j in range(global_batch_size)))

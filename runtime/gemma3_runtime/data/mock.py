"""Mock data: seeded random tokens. Sample i depends only on (seed, i), so any rank, any resume point and any
DP layout sees the same sample for the same global index - no state to checkpoint beyond the sample counter."""

from __future__ import annotations

import numpy as np


class MockDataset:
    def __init__(self, vocab_size: int, seq_length: int, seed: int, size: int = 1 << 40) -> None:
        self.vocab_size, self.seq_length, self.seed, self.size = vocab_size, seq_length, seed, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        tokens = rng.integers(0, self.vocab_size, self.seq_length + 1, dtype=np.int64)
        s = self.seq_length
        return {
            "input_ids": tokens[:-1],
            "labels": tokens[1:],
            "loss_mask": np.ones(s, dtype=np.float32),
            "position_ids": np.arange(s, dtype=np.int64),
            "segment_ids": np.ones(s, dtype=np.int64),
        }

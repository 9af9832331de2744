"""Train state (what resume needs besides tensors) and the RNG states of this process."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class TrainState:
    """Saved in every checkpoint's common state; `consumed_samples` is the data position (data/batches.py)."""

    iteration: int = 0
    consumed_samples: int = 0
    world_size: int = 1
    #: [iteration, loss, lr] per step, so the loss curve and logs span a resumed run
    train_losses: list = field(default_factory=list)
    #: [iteration, held-out loss]
    eval_losses: list = field(default_factory=list)
    #: [iteration, task accuracy]
    task_accuracies: list = field(default_factory=list)
    floating_point_operations: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def get_rng_state() -> dict[str, Any]:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])

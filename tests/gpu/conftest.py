"""GPU tier: each test leaves no distributed state behind. A Trainer built in-process initialises megatron's parallel
state and an NCCL group it does not destroy (the CLI's entry does that); left to interpreter shutdown, an NCCL group
can hang the exit, and a group left by one test would be reused by the next."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def released_process_group():
    yield
    import torch.distributed as dist

    from gemma3_runtime import platform

    platform.teardown()
    if dist.is_initialized():  # created outside platform (a test helper)
        dist.destroy_process_group()

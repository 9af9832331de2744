"""Rank-side checks for tests/unit/test_compat_megatron_cpu.py."""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_gather_needs_current_device() -> None:
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.mappings import all_gather_last_dim_from_tensor_parallel_region

    from gemma3_runtime.compat.megatron_cpu import cuda_current_device_is_cpu

    dist.init_process_group("gloo")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)
    x = torch.full((2, 1, 3), float(dist.get_rank()))
    try:
        all_gather_last_dim_from_tensor_parallel_region(x)
    except (AssertionError, RuntimeError):
        print(f"[rank {dist.get_rank()}] without shim: raised", flush=True)
    with cuda_current_device_is_cpu():
        out = all_gather_last_dim_from_tensor_parallel_region(x)
    assert out.shape == (2, 1, 6) and out[..., :3].eq(0).all() and out[..., 3:].eq(1).all()
    print(f"[rank {dist.get_rank()}] with shim: gathered", flush=True)
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()

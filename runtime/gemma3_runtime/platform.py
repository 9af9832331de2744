"""The only module that knows about devices and process groups.

The device is always chosen explicitly and logged: "cpu", "cuda", or None (= cuda when available). Asking for cuda
where CUDA does not work is an error: a GPU node with a broken driver must never silently train on CPU.
Process groups: gloo on CPU, NCCL on CUDA; ranks come from torchrun's environment, or a 1-process group is created.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger("gemma3_runtime.platform")

DEVICES = ("cpu", "cuda")


class DeviceError(RuntimeError):
    """The requested device cannot be used (maps to exit code 2 at the CLI)."""


def select_device(requested: str | None = None) -> torch.device:
    """Resolve "cpu" | "cuda" | None to a torch.device (cuda:<LOCAL_RANK> under torchrun) and log why."""
    if requested not in (None, *DEVICES):
        raise DeviceError(f"--device: {requested!r} is not a device, expected one of {', '.join(DEVICES)}")
    cuda_ok = torch.cuda.is_available()
    if requested == "cpu":
        device, why = torch.device("cpu"), "requested with --device cpu"
    elif requested == "cuda":
        if not cuda_ok:
            raise DeviceError(
                f"--device cuda: CUDA is not usable here (torch {torch.__version__}, built with CUDA "
                f"{torch.version.cuda or 'none'}, torch.cuda.is_available() is False); use --device cpu to run on CPU"
            )
        device, why = _local_cuda_device(), "requested with --device cuda"
    elif cuda_ok:
        device, why = _local_cuda_device(), "default: CUDA is available"
    else:
        device, why = torch.device("cpu"), "default: CUDA is not available"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        why += f" ({torch.cuda.get_device_name(device)})"
    log.info("device: %s (%s)", device, why)
    return device


def _local_cuda_device() -> torch.device:
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


@dataclass
class DistributedState:
    device: torch.device
    rank: int
    world_size: int
    tp: int
    pp: int
    created_process_group: bool
    cp: int = 1


_state: DistributedState | None = None
_cpu_shims = contextlib.ExitStack()
_shims_entered = False


def _ensure_process_group(device: torch.device, timeout_minutes: int) -> bool:
    """The process group: torchrun's (RANK/WORLD_SIZE set) or a 1-process one, NCCL on CUDA, gloo on CPU; an
    existing one is kept, unless it is gloo and the work is on CUDA. True when this call created it."""
    from datetime import timedelta

    import torch.distributed as dist

    if dist.is_initialized():
        if device.type == "cuda" and dist.get_backend() == "gloo":
            # an existing gloo group cannot carry the CUDA collectives megatron issues (its coalesced all-gathers crash)
            raise DeviceError(
                "torch.distributed is already initialised with the gloo backend, which cannot carry CUDA tensors; "
                "destroy it (or start a new process) before training on cuda"
            )
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(minutes=timeout_minutes)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend=backend, timeout=timeout)
    else:
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return True


def init_distributed(
    device: torch.device | str | None,
    tp: int = 1,
    pp: int = 1,
    seed: int = 1234,
    timeout_minutes: int = 30,
    cp: int = 1,
) -> DistributedState:
    """Process group (torchrun env or a 1-process group) + megatron parallel state + seeds. Idempotent for the
    same sizes; a different TP/PP/CP in an initialised process is an error (tear down first).

    `cp`: the context-parallel size (docs/CONTEXT_PARALLEL.md); megatron's parallel state provides its group and
    the data x context group that gradients are reduced over."""
    global _state, _shims_entered

    import torch.distributed as dist
    from megatron.core import parallel_state

    from .compat.megatron_cpu import check_megatron_version, cpu_process, cpu_rng_tracker

    check_megatron_version()
    if not isinstance(device, torch.device):
        device = select_device(device)
    created = _ensure_process_group(device, timeout_minutes)
    world = dist.get_world_size()
    if world % (tp * pp * cp):
        raise DeviceError(
            f"tensor/pipeline/context parallel sizes tp={tp} x pp={pp} x cp={cp} do not divide the world size {world}"
        )
    fresh = not parallel_state.model_parallel_is_initialized()
    if not fresh:
        have = (
            parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size(),
            parallel_state.get_context_parallel_world_size(),
        )
        if have != (tp, pp, cp):
            raise DeviceError(
                f"megatron parallel state already initialised with tp={have[0]}, pp={have[1]}, cp={have[2]}; "
                f"asked for tp={tp}, pp={pp}, cp={cp}"
            )
    else:
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            context_parallel_size=cp,
            distributed_timeout_minutes=timeout_minutes,
        )
    if not torch.cuda.is_available() and not _shims_entered:
        # without CUDA these megatron calls can only raise; forward and backward passes reach them
        _cpu_shims.enter_context(cpu_process())
        _shims_entered = True
    if fresh:
        # Same CPU seed on every rank: megatron's CPU initialisation draws full weights from it, sliced per TP rank.
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

            model_parallel_cuda_manual_seed(seed)
        else:
            cpu_rng_tracker(seed, tp_rank=parallel_state.get_tensor_model_parallel_rank())
    created = created or bool(_state and _state.created_process_group)
    _state = DistributedState(device, dist.get_rank(), world, tp, pp, created, cp)
    log.info(
        "distributed: rank %d/%d, tp=%d pp=%d cp=%d, backend %s", _state.rank, world, tp, pp, cp, dist.get_backend()
    )
    return _state


def current() -> DistributedState | None:
    return _state


def teardown() -> None:
    """Destroy megatron's parallel state and the process group if we created it; undo CPU shims."""
    global _state, _shims_entered
    import torch.distributed as dist
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if _state is not None and _state.created_process_group and dist.is_initialized():
        dist.destroy_process_group()
    _cpu_shims.close()
    _shims_entered = False
    _state = None

"""The ONE place that makes megatron-core 0.16.1 run on a machine without CUDA.

Only the CUDA hard-codings that our code paths actually reach are handled, each as narrowly as it can be:
- `cpu_rng_tracker(seed)`: megatron's RNG tracker keeps CUDA generator states (`model_parallel_cuda_manual_seed`,
  `get_cuda_rng_tracker().fork()`); ours keeps CPU generator states with the same seeds per TP rank.
- `cuda_current_device_is_cpu()`: megatron allocates communication buffers on `torch.cuda.current_device()`
  (the all-gather used when kv heads < TP ranks, megatron DDP buffers). Without CUDA that call can only raise, so
  answering "cpu" changes nothing that could have worked. It is needed in backward passes too, so the platform
  layer enters it for the life of a CPU process group; tests enter it in a `with`.
- `cuda_rng_state_is_noop()`: megatron's activation checkpoint (full recompute) saves and restores the CUDA RNG
  state next to the CPU one and the tracker's; without CUDA there is none (the CPU state is still restored). Needed
  in forward and backward, so the platform layer enters it with the current_device shim.
- `cuda_synchronize_is_noop()`: dist_checkpointing's writer calls `torch.cuda.synchronize()` (save only).
- `tensor_cuda_is_identity()`: tied embeddings with PP > 1 move the last stage's copy with `.cuda()` before the
  all-reduce that syncs it with the first stage (model construction only).
Every shim refuses to act when CUDA IS available: on a GPU node these paths must run megatron's own code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

SUPPORTED_MEGATRON_CORE = ("0.16.1",)


class UnsupportedMegatronVersion(RuntimeError):
    pass


def check_megatron_version() -> str:
    """Refuse megatron-core versions whose CUDA hard-codings we have not checked."""
    from megatron.core.package_info import __version__

    if __version__ not in SUPPORTED_MEGATRON_CORE:
        raise UnsupportedMegatronVersion(
            f"megatron-core {__version__} is not supported by gemma3_runtime.compat.megatron_cpu "
            f"(checked: {', '.join(SUPPORTED_MEGATRON_CORE)}); pin megatron-core==0.16.1 (constraints.txt)"
        )
    return __version__


def _require_no_cuda(what: str) -> None:
    if torch.cuda.is_available():
        raise RuntimeError(f"{what} is a CPU-only shim; CUDA is available here, use megatron's own code path")


# ---- RNG tracker ------------------------------------------------------------------------------------------------
def _make_cpu_tracker_class():
    from megatron.core.tensor_parallel.random import CudaRNGStatesTracker

    class CpuRNGStatesTracker(CudaRNGStatesTracker):
        """Same bookkeeping as megatron's tracker, on the CPU generator."""

        def add(self, name: str, seed: int) -> None:
            if seed in self.seeds_:
                raise ValueError(f"seed {seed} already exists")
            if name in self.states_:
                raise ValueError(f"rng state {name} already exists")
            self.seeds_.add(seed)
            saved = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(saved)

        @contextlib.contextmanager
        def fork(self, name: str = "model-parallel-rng"):
            if name not in self.states_:
                raise KeyError(f"rng state {name} is not added")
            saved = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(saved)

    return CpuRNGStatesTracker


def cpu_rng_tracker(seed: int, tp_rank: int = 0, ep_rank: int = 0, etp_rank: int = 0) -> None:
    """Install a CPU-state tracker seeded as `model_parallel_cuda_manual_seed` would seed the CUDA one."""
    _require_no_cuda("cpu_rng_tracker")
    from megatron.core.tensor_parallel import random as mrandom

    tracker = _make_cpu_tracker_class()()
    tracker.add(mrandom._DATA_PARALLEL_RNG_TRACKER_NAME, seed)
    tracker.add(mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME, seed + 2718 + tp_rank)
    tracker.add(mrandom._EXPERT_PARALLEL_RNG_TRACKER_NAME, seed + 1024 + 100 * ep_rank + etp_rank)
    mrandom._CUDA_RNG_STATE_TRACKER = tracker
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


# ---- scoped shims -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def cuda_current_device_is_cpu() -> Iterator[None]:
    """`torch.cuda.current_device()` returns "cpu" inside the block (megatron passes it as `device=`)."""
    _require_no_cuda("cuda_current_device_is_cpu")
    cuda = torch.cuda  # held locally: a process-long block is closed at interpreter exit, when globals are gone
    original = cuda.current_device
    cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    try:
        yield
    finally:
        cuda.current_device = original  # type: ignore[assignment]


@contextlib.contextmanager
def cuda_rng_state_is_noop() -> Iterator[None]:
    """megatron.core.tensor_parallel.random's CUDA RNG get/set do nothing inside the block."""
    _require_no_cuda("cuda_rng_state_is_noop")
    from megatron.core.tensor_parallel import random as mrandom

    original = mrandom._get_cuda_rng_state, mrandom._set_cuda_rng_state
    mrandom._get_cuda_rng_state = lambda *a, **k: None
    mrandom._set_cuda_rng_state = lambda *a, **k: None
    try:
        yield
    finally:
        mrandom._get_cuda_rng_state, mrandom._set_cuda_rng_state = original


@contextlib.contextmanager
def cpu_process() -> Iterator[None]:
    """The shims a CPU process needs for its whole life (forward AND backward passes reach them)."""
    with cuda_current_device_is_cpu(), cuda_rng_state_is_noop():
        yield


@contextlib.contextmanager
def cuda_synchronize_is_noop() -> Iterator[None]:
    """`torch.cuda.synchronize()` does nothing inside the block (there is no device to wait for)."""
    _require_no_cuda("cuda_synchronize_is_noop")
    original = torch.cuda.synchronize
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.cuda.synchronize = original  # type: ignore[assignment]


@contextlib.contextmanager
def tensor_cuda_is_identity() -> Iterator[None]:
    """`tensor.cuda()` returns the tensor unchanged inside the block."""
    _require_no_cuda("tensor_cuda_is_identity")
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[assignment]


@contextlib.contextmanager
def cpu_checkpoint_io() -> Iterator[None]:
    """Everything megatron dist_checkpointing save/load touches on CUDA."""
    with cuda_current_device_is_cpu(), cuda_synchronize_is_noop():
        yield


# ---- pipeline schedules (added by the training loop) --------------------------------------------------------------
class _CpuScheduleTorch:
    """Stands in for `torch` inside megatron's schedules module: `torch.zeros(..., device="cuda")` (the literal
    token counter of every schedule) is made on the CPU; everything else is torch itself."""

    def __init__(self, real_torch) -> None:
        self._torch = real_torch

    def __getattr__(self, name: str):
        return getattr(self._torch, name)

    def zeros(self, *args, device=None, **kwargs):
        if device == "cuda" or (isinstance(device, torch.device) and device.type == "cuda"):
            device = "cpu"
        return self._torch.zeros(*args, device=device, **kwargs)


@contextlib.contextmanager
def cpu_pipeline_schedules() -> Iterator[None]:
    """megatron's forward-backward schedules allocate `total_num_tokens` with `device="cuda"` (0.16.1, schedules.py);
    inside the block that counter lives on the CPU. p2p (PP > 1) also needs `cuda_current_device_is_cpu()`."""
    _require_no_cuda("cpu_pipeline_schedules")
    from megatron.core.pipeline_parallel import schedules

    original = schedules.torch
    schedules.torch = _CpuScheduleTorch(original)
    try:
        yield
    finally:
        schedules.torch = original

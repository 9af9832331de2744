"""Switch megatron-core's torch AdamW fallback to torch's fused (single-kernel, multi-tensor) implementation.

WHY: without TransformerEngine or apex, megatron-core 0.16.1 builds `torch.optim.AdamW` with default arguments,
which on CUDA means the `foreach` implementation: several multi-tensor kernels per step, each a full pass over
fp32 master weights and moments. For the 1B model that optimizer step moves ~30 GB and, at micro-batch 2 with one
optimizer step per micro-batch, costs a double-digit share of the step. `fused=True` does the whole update in one
pass. The flag is flipped on the existing param groups (same hyper-parameters, same state layout, same
checkpoints), before the first step creates state; any `step` counters that already exist are moved to the device
as the fused kernel requires.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import torch

log = logging.getLogger("gemma3_runtime.perf")


def _torch_optimizers(opt: Any) -> Iterator[torch.optim.Optimizer]:
    """The torch optimizers inside a megatron optimizer (chained / distributed / mixed-precision wrappers)."""
    if isinstance(opt, torch.optim.Optimizer):
        yield opt
        return
    for child in getattr(opt, "chained_optimizers", None) or []:
        yield from _torch_optimizers(child)
    inner = getattr(opt, "optimizer", None)
    if inner is not None and inner is not opt:
        yield from _torch_optimizers(inner)


def use_fused_adamw(optimizer: Any) -> int:
    """Set fused=True on every (Adam/AdamW) param group whose params are all floating-point CUDA tensors.

    Returns the number of param groups switched (0 on CPU or for other optimizers).
    """
    switched = 0
    for opt in _torch_optimizers(optimizer):
        if not isinstance(opt, torch.optim.Adam):  # AdamW subclasses Adam
            continue
        for group in opt.param_groups:
            params = group["params"]
            if not params or not all(p.is_cuda and p.is_floating_point() for p in params):
                continue
            if group.get("differentiable") or group.get("fused"):
                continue
            group["fused"] = True
            group["foreach"] = False
            for p in params:
                state = opt.state.get(p)
                if state and "step" in state and not state["step"].is_cuda:
                    state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
            switched += 1
    if switched:
        log.info("fused AdamW on %d param groups", switched)
    return switched

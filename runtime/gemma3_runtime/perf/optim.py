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


# ---- megatron's multi-tensor fallbacks (no apex / TE) ---------------------------------------------------------------
def foreach_l2_norm(chunk_size: int, noop_flag: Any, tensor_lists: list, per_tensor: bool, *args: Any):
    """Drop-in for megatron.core.utils.local_multi_tensor_l2_norm: same result ([1] fp32 CUDA tensor, None).

    WHY: the fallback builds `torch.tensor([norm_0, norm_1, ...])` from CUDA scalars - one device->host copy and
    sync per parameter tensor (~240 for the 1B model) on every step's grad-norm / clipping. `torch._foreach_norm`
    is one multi-tensor kernel and the reduction stays on the device.
    """
    tensors = [t for t in tensor_lists[0]]
    if not tensors:
        return torch.zeros(1, dtype=torch.float, device="cuda"), None
    norms = torch._foreach_norm(tensors)
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
    return total.reshape(1), None


def foreach_scale(chunk_size: int, noop_flag: Any, tensor_lists: list, scale: Any) -> None:
    """Drop-in for megatron.core.utils.local_multi_tensor_scale (dst = src * scale) with foreach kernels."""
    src, dst = list(tensor_lists[0]), list(tensor_lists[1])
    if not src:
        return
    if all(s is d for s, d in zip(src, dst)):
        torch._foreach_mul_(dst, scale)
    else:
        torch._foreach_copy_(dst, torch._foreach_mul(src, scale))


def use_foreach_grad_clipping() -> bool:
    """Point megatron's grad-norm / clip code at the foreach versions when it runs on its local fallbacks.

    Only the fallbacks are replaced (apex / TransformerEngine kernels, when installed, are left alone); the
    replacement computes the same values. Returns True when installed.
    """
    import megatron.core.optimizer.clip_grads as clip_grads
    from megatron.core import utils as mutils

    changed = False
    if clip_grads.l2_norm_impl is mutils.local_multi_tensor_l2_norm:
        clip_grads.l2_norm_impl = foreach_l2_norm
        changed = True
    if clip_grads.multi_tensor_scale_impl is mutils.local_multi_tensor_scale:
        clip_grads.multi_tensor_scale_impl = foreach_scale
        changed = True
    if changed:
        log.info("megatron grad norm / clipping: foreach kernels instead of the per-tensor fallback")
    return changed or clip_grads.l2_norm_impl is foreach_l2_norm

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
from collections.abc import Iterator
from typing import Any

import torch

from .patches import MEGATRON_PATCHES

log = logging.getLogger("gemma3_runtime.perf")


def megatron_parts(megatron_optimizer: Any) -> list:
    """The optimizers inside a megatron optimizer: a ChainedOptimizer's parts (get_megatron_optimizer wraps even a
    single optimizer in one), else the optimizer itself."""
    return list(getattr(megatron_optimizer, "chained_optimizers", None) or [megatron_optimizer])


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
    if all(s is d for s, d in zip(src, dst, strict=False)):
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
        MEGATRON_PATCHES.replace(clip_grads, "l2_norm_impl", foreach_l2_norm)
        changed = True
    if clip_grads.multi_tensor_scale_impl is mutils.local_multi_tensor_scale:
        MEGATRON_PATCHES.replace(clip_grads, "multi_tensor_scale_impl", foreach_scale)
        changed = True
    if changed:
        log.info("megatron grad norm / clipping: foreach kernels instead of the per-tensor fallback")
    return changed or clip_grads.l2_norm_impl is foreach_l2_norm


# ---- the optimizer step without a host sync -------------------------------------------------------------------
def sync_free_unsupported(opt: Any) -> str | None:
    """Why `sync_free_step` cannot stand in for `opt.step()` (None when it can)."""
    chained = megatron_parts(opt)
    for o in chained:
        if getattr(o, "grad_scaler", None) is not None:
            return "a loss scaler (fp16) checks for inf on the host"
        cfg = getattr(o, "config", None)
        if cfg is None or getattr(cfg, "log_num_zeros_in_grad", False):
            return "counting zero gradients reads a value on the host"
        if getattr(cfg, "use_precision_aware_optimizer_no_fp8_or_ds_fp8", False):
            return "precision-aware optimizer"
        adams = list(_torch_optimizers(getattr(o, "optimizer", None)))
        if not adams or not all(
            isinstance(a, torch.optim.Adam) and all(g.get("fused") for g in a.param_groups) for a in adams
        ):
            return "not torch's fused Adam everywhere"
    if (
        len(chained) > 1
        and hasattr(opt, "grads_states_parallel_group_is_shared")
        and not opt.grads_states_parallel_group_is_shared()
    ):
        return "chained optimizers reduce their grad norms over different groups"
    return None


@torch.no_grad()
def sync_free_step(opt: Any) -> torch.Tensor:
    """megatron's MixedPrecision / Chained optimizer step (bf16, no loss scaler) without reading a value on the host.

    WHY: megatron turns the grad norm into a Python float (`.item()`) to decide on clipping, so every step makes the
    host wait for the GPU; the GPU then idles while the host runs the optimizer's per-parameter Python and launches
    the next step (docs/PERFORMANCE.md). Here the norm stays a device tensor and clipping is folded into
    the fused Adam kernel as its `grad_scale` (grads / max(1, (norm + 1e-6) / clip) == megatron's
    grads * min(1, clip / (norm + 1e-6))), so clipping costs no separate pass either. Same update as `opt.step()`
    up to float rounding. Returns the global grad norm (0-dim fp32 device tensor).
    """
    chained = megatron_parts(opt)
    opt.prepare_grads()  # copies grads into the main params' .grad; no inf check without a loss scaler
    grads = [g for o in chained for g in o.get_main_grads_for_grad_norm()]
    if grads:
        squares = torch.stack([n.float() for n in torch._foreach_norm(grads)]).square().sum()
    else:
        squares = torch.zeros((), dtype=torch.float32, device=torch.device("cuda", torch.cuda.current_device()))
    group = chained[0].get_grad_stats_parallel_group()
    if torch.distributed.is_initialized() and torch.distributed.get_world_size(group) > 1:
        torch.distributed.all_reduce(squares, op=torch.distributed.ReduceOp.SUM, group=group)
    norm = squares.sqrt()
    adams: list[torch.optim.Optimizer] = []
    try:
        for o in chained:
            clip = float(o.config.clip_grad)
            for adam in _torch_optimizers(o.optimizer):
                adam.grad_scale = torch.clamp((norm + 1.0e-6) / clip, min=1.0) if clip > 0 else None
                adams.append(adam)
        opt.step_with_ready_grads()
    finally:
        for adam in adams:
            adam.grad_scale = None
    return norm

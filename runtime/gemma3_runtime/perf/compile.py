"""torch.compile of the decoder's hot parts, in place, keeping module and parameter names unchanged.

WHY: without TransformerEngine every elementwise step of a Gemma 3 layer is its own kernel: the fp32 (1+w) RMSNorm
(six per layer: input, q, k, post-attention, pre-MLP, post-MLP) alone is ~8 passes over the activations, GeGLU is
four, residual adds and RoPE more. At 1B / seq 4096 that memory traffic costs about half the GEMM time. Inductor
fuses each run of elementwise ops into one kernel (and the backward likewise), which is the only route to the
hardware's matmul ceiling on a torch-native stack.

Each chosen module's training forward is wrapped by torch.compile in place (`_compile_for_training`): names,
state_dict, DDP hooks and checkpoints are untouched, evaluation and KV-cached generation stay eager, and the
uncompiled path stays available (compile is a run-time choice, never a different model).
Targets: "layers" = every TransformerLayer (norms, QKV/MLP projections, RoPE, attention, GeGLU, residuals in one
graph), or "none".
Instances of one class share compiled code (dynamo lifts their parameters to inputs), so the 26 layers of the 1B
model cost two compilations (sliding and global), not 26; the recompile limit is raised so that never falls back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from .patches import MEGATRON_PATCHES

log = logging.getLogger("gemma3_runtime.perf")

COMPILE_TARGETS = ("none", "layers")


def _configure_dynamo(limit: int = 128) -> None:
    """Raise the recompile limit (see module doc) and let megatron's per-call `warnings.warn` (e.g. in
    get_tensor_model_parallel_group_if_none) be replayed after the graph instead of breaking it."""
    import warnings

    cfg = torch._dynamo.config
    if hasattr(cfg, "reorderable_logging_functions"):
        cfg.reorderable_logging_functions.add(warnings.warn)
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < limit:
            setattr(cfg, name, limit if "accumulated" not in name else max(limit * 8, getattr(cfg, name)))


def _quiet_tp_group_lookup() -> None:
    """Make megatron's per-call tp-group lookup warning-free while compiling.

    WHY: megatron-core 0.16.1's RowParallelLinear.forward passes `tp_group=None` to its linear function, which then
    calls `get_tensor_model_parallel_group_if_none` and, on rank 0, `warnings.warn(..., DeprecationWarning)` on
    EVERY call. dynamo cannot trace `warnings.warn`, so each linear_proj / linear_fc2 would split the layer's graph in
    three. The replacement returns the same group (the default TP group; expert groups keep the original path)
    without the warning. It is installed only when compilation is requested.
    """
    import megatron.core.tensor_parallel.layers as layers
    from megatron.core import parallel_state

    original = getattr(layers.get_tensor_model_parallel_group_if_none, "__wrapped_original__", None)
    if original is not None:
        return
    original = layers.get_tensor_model_parallel_group_if_none

    def get_group(tp_group=None, is_expert=False, check_initialized=True):
        if (
            tp_group is None
            and not is_expert
            and torch.distributed.is_initialized()
            and parallel_state.is_initialized()
        ):
            return parallel_state.get_tensor_model_parallel_group(check_initialized=check_initialized)
        return original(tp_group, is_expert=is_expert, check_initialized=check_initialized)

    get_group.__wrapped_original__ = original  # type: ignore[attr-defined]
    MEGATRON_PATCHES.replace(layers, "get_tensor_model_parallel_group_if_none", get_group)


def _targets(model: nn.Module, target: str) -> list[tuple[str, nn.Module]]:
    from megatron.core.transformer.transformer_layer import TransformerLayer

    if target != "layers":
        raise ValueError(f"compile target {target!r}, expected one of {COMPILE_TARGETS}")
    classes = (TransformerLayer,)
    chosen: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, classes) and not any(name.startswith(prev + ".") for prev, _ in chosen):
            chosen.append((name, module))
    return chosen


def _compile_for_training(module: nn.Module, **kwargs) -> None:
    """Route the module's training forward (train mode, grad enabled) through torch.compile; everything else
    (evaluation under no_grad, KV-cached generation whose shapes change every token) stays eager, so it never
    triggers recompilation. The instance's `forward` attribute is replaced; parameters and names are untouched."""
    if getattr(module, "_gemma3_compiled", False):
        return
    eager = module.forward
    compiled = torch.compile(eager, **kwargs)

    def forward(*args, **kw):
        if module.training and torch.is_grad_enabled():
            return compiled(*args, **kw)
        return eager(*args, **kw)

    module.forward = forward
    module._gemma3_compiled = True


def compile_model(models: Iterable[nn.Module] | nn.Module, target: str = "layers", **compile_kwargs) -> list[str]:
    """Compile `target` submodules of each model in place; returns the compiled module names ([] for "none")."""
    if target == "none":
        return []
    if target not in COMPILE_TARGETS:
        raise ValueError(f"compile target {target!r}, expected one of {COMPILE_TARGETS}")
    _configure_dynamo()
    _quiet_tp_group_lookup()
    kwargs = {"dynamic": False, **compile_kwargs}
    names: list[str] = []
    for model in [models] if isinstance(models, nn.Module) else list(models):
        for name, module in _targets(model, target):
            _compile_for_training(module, **kwargs)
            names.append(name)
    log.info("torch.compile(%s) on %d modules (%s)", target, len(names), kwargs)
    return names

"""GeGLU (tanh-GELU(gate) * up) as one forward and ONE backward kernel, with its output kept for fc2's backward.
(The backward is a hand-written Triton kernel where Triton runs: see perf/geglu_triton.py for why.)

WHY: inside the compiled decoder layer, inductor's partitioner keeps the fc1 output [tokens, 2I] for the backward
and recomputes the GeGLU output h [tokens, I] there (fc2's weight gradient needs it), so the backward runs two
kernels that both re-read gate and up (the recompute and dgate/dup, written as one [tokens, 2I] tensor), both near
the memory roofline (docs/PERFORMANCE.md). Here GeGLU is
an opaque custom op (`gemma3::geglu`) whose autograd formula is another custom op: the partitioner cannot recompute
it, so h is saved (fc2 keeps its input) and the recompute kernel disappears, at the cost of h's memory
(tokens x I bf16 per layer: ~226 MB per layer at 16k tokens, ~5.9 GB over the 1B's 26 layers).
Each op's body is one torch.compile'd function on CUDA (one Triton kernel each); elsewhere, or if that compile
fails, the same formulas run eagerly.

Only the training forward (train mode, grad enabled, the plain gated/no-bias/no-clamp case) takes this path
(`FusedGeGLUMLP`); evaluation and KV-cached generation keep megatron's MLP code, so changing shapes never recompile.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger("gemma3_runtime.perf")

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def geglu_reference(x: torch.Tensor) -> torch.Tensor:
    """megatron's glu with Gemma's activation: gelu_tanh(x[..., :I]) * x[..., I:] (what the MLP computes)."""
    gate, up = torch.chunk(x, 2, dim=-1)
    return F.gelu(gate, approximate="tanh") * up


def _geglu_backward_math(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """d/dx of sum(grad * gelu_tanh(gate) * up), as one [..., 2I] tensor in x's dtype (computed in fp32)."""
    gate, up = torch.chunk(x, 2, dim=-1)
    g, u, dy = gate.float(), up.float(), grad.float()
    inner = _SQRT_2_OVER_PI * (g + 0.044715 * g * g * g)
    t = torch.tanh(inner)
    gelu = 0.5 * g * (1.0 + t)
    dgelu = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * g * g)
    return torch.cat([(dy * u * dgelu).to(x.dtype), (dy * gelu).to(x.dtype)], dim=-1)


_KERNELS: dict[str, Callable] = {}


def _kernel(name: str, fn: Callable, like: torch.Tensor) -> Callable:
    """torch.compile'd `fn` on CUDA (one fused kernel), `fn` itself elsewhere or after a failed compile."""
    if not like.is_cuda:
        return fn
    k = _KERNELS.get(name)
    if k is None:
        k = _KERNELS[name] = torch.compile(fn, dynamic=False, fullgraph=True)
    return k


def _run(name: str, fn: Callable, *args: torch.Tensor) -> torch.Tensor:
    try:
        return _kernel(name, fn, args[0])(*args)
    except Exception as exc:  # the lever must never take the run down: log once, keep the eager formula
        if _KERNELS.get(name) is not fn:
            log.warning(
                "fused GeGLU: compiling %s failed (%s); using the eager formula",
                name,
                str(exc).splitlines()[0][:200] if str(exc) else repr(exc),
            )
            _KERNELS[name] = fn
        return fn(*args)


@torch.library.custom_op("gemma3::geglu", mutates_args=())
def geglu(x: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(gate) * up for x = [gate, up] on the last dim (contiguous output)."""
    return _run("fwd", geglu_reference, x.contiguous())


@geglu.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


_TRITON_FAILED: list[str] = []


@torch.library.custom_op("gemma3::geglu_backward", mutates_args=())
def geglu_backward(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The gradient of `geglu` w.r.t. x in one pass over x and grad: the Triton kernel where it can run
    (perf/geglu_triton.py), else the compiled formula; a failing kernel is logged once and not tried again."""
    from . import geglu_triton

    if not _TRITON_FAILED and geglu_triton.available(x):
        try:
            return geglu_triton.geglu_backward(x, grad)
        except Exception as exc:  # the lever must never take the run down
            _TRITON_FAILED.append(str(exc).splitlines()[0][:200] if str(exc) else repr(exc))
            log.warning(
                "fused GeGLU: the Triton backward kernel failed (%s); using the compiled formula", _TRITON_FAILED[0]
            )
    return _run("bwd", _geglu_backward_math, x.contiguous(), grad.contiguous())


@geglu_backward.register_fake
def _(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return torch.ops.gemma3.geglu_backward(x, grad)


geglu.register_autograd(_backward, setup_context=_setup_context)


def _fused_mlp_class(base: type) -> type:
    from megatron.core.transformer.mlp import MLP

    class FusedGeGLUMLP(base):  # type: ignore[misc, valid-type]
        """megatron's MLP with the GeGLU of the training forward as `gemma3::geglu` (see module doc)."""

        _gemma3_base_class = base

        def forward(self, hidden_states, per_token_scale=None, **kwargs):
            # megatron's MLP.forward ignores its **kwargs (e.g. the layer's padding_mask); so does this one
            if not (self.training and torch.is_grad_enabled()) or per_token_scale is not None:
                return MLP.forward(self, hidden_states, per_token_scale=per_token_scale, **kwargs)
            intermediate, bias = self.linear_fc1(hidden_states)
            if bias is not None:
                intermediate = intermediate + bias
            output, output_bias = self.linear_fc2(torch.ops.gemma3.geglu(intermediate))
            return output, output_bias

    FusedGeGLUMLP.__name__ = f"FusedGeGLU{base.__name__}"
    return FusedGeGLUMLP


def _eligible(module) -> bool:
    from megatron.core.transformer.mlp import MLP

    from ..model.layers import gelu_tanh

    cfg = getattr(module, "config", None)
    return (
        type(module) is MLP
        and cfg is not None
        and cfg.gated_linear_unit
        and cfg.activation_func is gelu_tanh
        and not cfg.use_te_activation_func
        and not cfg.bias_activation_fusion
        and getattr(cfg, "glu_linear_offset", 0.0) == 0.0
        and getattr(cfg, "activation_func_clamp_value", None) is None
    )


def use_fused_geglu(models) -> int:
    """Swap every eligible MLP's class for its FusedGeGLU subclass (names, parameters, state_dict unchanged);
    returns how many were swapped."""
    classes: dict[type, type] = {}
    n = 0
    for model in models:
        for module in model.modules():
            if _eligible(module):
                base = type(module)
                module.__class__ = classes.setdefault(base, _fused_mlp_class(base))
                n += 1
    if n:
        log.info("fused GeGLU op on %d MLPs", n)
    return n

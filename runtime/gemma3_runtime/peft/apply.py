"""Attach adapters to a megatron model, freeze the base, and merge them back exactly.

An adapted linear keeps its own parameter names (`...linear_qkv.weight` stays where the bridge and checkpoints expect
it) and gains an `adapter` child. To change its forward without wrapping it in a differently-named module, the
instance's class is swapped for a generated subclass (the technique `torch.nn.utils.parametrize` uses), and swapped
back by `merge_peft`. `isinstance` checks elsewhere (bridge, TP helpers) keep working.

Post-normed linears (Gemma's linear_proj / linear_fc2 carry the post-attention / post-FFN norm) must expose
`linear_forward(x) -> (out, bias)` and `post_layernorm`: the update is added to `out` BEFORE the norm, so merging it
into the weight is exact. `update_position="post_norm"` reproduces the anchor's placement (after the norm), which no
merge can represent; it exists only as the negative control of the exactness tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

import torch
from torch import nn

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.peft.adapter import LowRankAdapter, ParallelMode
from gemma3_runtime.peft.config import PeftConfig

UpdatePosition = Literal["pre_norm", "post_norm"]
ModelOrChunks = nn.Module | Iterable[nn.Module]


class _AdaptedLinear:
    """Mixin placed in front of the wrapped linear's class; see the module docstring."""

    adapter: LowRankAdapter
    _peft_update_position: UpdatePosition = "pre_norm"

    def forward(self, input_: torch.Tensor, *args, **kwargs):
        if _is_post_normed(self):
            out, bias = self.linear_forward(input_, *args, **kwargs)
            if self._peft_update_position == "pre_norm":
                return self.post_layernorm(self.adapter(input_, out, self.weight)), bias
            return self.adapter(input_, self.post_layernorm(out), self.weight), bias
        out, bias = super().forward(input_, *args, **kwargs)
        return self.adapter(input_, out, self.weight), bias

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        """The base class would save the adapter as replicated; shard B / A / the magnitude like the base weight."""
        from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

        state = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        adapter_prefix = f"{prefix}adapter."
        for key in [k for k in state if k.startswith(adapter_prefix)]:
            del state[key]
        state.update(
            make_sharded_tensors_for_checkpoint(
                self.adapter.state_dict(prefix="", keep_vars=True),
                adapter_prefix,
                adapter_tp_axes(self.adapter.parallel_mode),
                sharded_offsets,
                tp_group=self.tp_group,
                dp_cp_group=(metadata or {}).get("dp_cp_group"),
            )
        )
        return state


_ADAPTED_CLASSES: dict[type, type] = {}


def _adapted_class(base_cls: type) -> type:
    if base_cls not in _ADAPTED_CLASSES:
        _ADAPTED_CLASSES[base_cls] = type(
            f"Adapted{base_cls.__name__}", (_AdaptedLinear, base_cls), {"_peft_base_class": base_cls}
        )
    return _ADAPTED_CLASSES[base_cls]


def adapter_tp_axes(mode: ParallelMode) -> dict[str, int]:
    """Which adapter tensors are TP-sharded, and along which dim (the rest are replicated)."""
    if mode == "column":
        return {"linear_out.weight": 0, "weight_magnitude": 0}
    return {"linear_in.weight": 1}


def _is_post_normed(module: nn.Module) -> bool:
    return hasattr(module, "post_layernorm") and hasattr(module, "linear_forward")


def _parallel_mode(module: nn.Module) -> ParallelMode | None:
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    if isinstance(module, RowParallelLinear):
        return "row"
    if isinstance(module, ColumnParallelLinear):
        return "column"
    mode = getattr(module, "parallel_mode", None)  # TransformerEngine-style linears
    return mode if mode in ("column", "row") else None


def _chunks(model: ModelOrChunks) -> list[nn.Module]:
    return [model] if isinstance(model, nn.Module) else list(model)


def adapted_modules(model: ModelOrChunks) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, linear) of every adapted linear, in module order."""
    for chunk in _chunks(model):
        for name, module in chunk.named_modules():
            if isinstance(module, _AdaptedLinear):
                yield name, module


def _check_supported(name: str, module: nn.Module, mode: ParallelMode) -> None:
    if getattr(module, "sequence_parallel", False):
        raise UserInputError(
            f"peft: {name} runs with sequence_parallel, which LoRA/DoRA does not support; "
            "set parallelism.sequence_parallel=false"
        )
    if mode == "column" and getattr(module, "gather_output", False):
        raise UserInputError(f"peft: {name} gathers its output (gather_output=True); adapters need a sharded output")
    if getattr(module, "bias", None) is not None:
        raise UserInputError(f"peft: {name} has a bias; Gemma 3 linears have none and adapters here assume none")
    if getattr(module, "post_layernorm", None) is not None and not hasattr(module, "linear_forward"):
        raise UserInputError(
            f"peft: {name} has a post-norm but no linear_forward(); the update could not act before the norm"
        )


def apply_peft(model: ModelOrChunks, cfg: PeftConfig, *, update_position: UpdatePosition = "pre_norm") -> list[str]:
    """Freeze every base parameter and add an adapter to each target linear; returns the adapted names.

    Call after the base weights are loaded: a fresh DoRA magnitude is ||W0|| of the weights present now (or call
    `reset_dora_magnitudes` after loading). Build DDP / the optimizer afterwards so only adapters are trained.
    """
    cfg.validate()
    adapted: list[str] = []
    for chunk in _chunks(model):
        for param in chunk.parameters():
            param.requires_grad_(False)
        for name, module in list(chunk.named_modules()):
            if name.rsplit(".", 1)[-1] not in cfg.targets or isinstance(module, _AdaptedLinear):
                continue
            mode = _parallel_mode(module)
            if mode is None:
                continue
            _check_supported(name, module, mode)
            module.adapter = LowRankAdapter(
                cfg,
                full_in_features=int(module.input_size),
                full_out_features=int(module.output_size),
                parallel_mode=mode,
                tp_group=getattr(module, "tp_group", None),
                base_weight=module.weight,
                init_key=name,
            )
            module.__class__ = _adapted_class(type(module))
            module._peft_update_position = update_position
            adapted.append(name)
    if not adapted:
        raise UserInputError(f"peft.targets: no module named {', '.join(cfg.targets)} was found in the model")
    return adapted


def reset_dora_magnitudes(model: ModelOrChunks) -> None:
    """Re-initialise every DoRA magnitude to ||W0 + sBA|| (after base weights were loaded into an adapted model)."""
    for _, module in adapted_modules(model):
        module.adapter.reset_magnitude(module.weight)


@torch.no_grad()
def merge_peft(model: ModelOrChunks) -> list[str]:
    """Fold every adapter into its base weight in place (exact for LoRA and DoRA) and remove the adapters.

    Every TP rank must call it (DoRA's row-parallel norm is all-reduced). Returns the merged names.
    """
    merged: list[str] = []
    for name, module in list(adapted_modules(model)):
        new_weight = module.adapter.merged_weight(module.weight)
        module.weight.data.copy_(new_weight.to(module.weight.dtype))
        unwrap_linear(module)
        merged.append(name)
    return merged


def unwrap_linear(module: nn.Module) -> None:
    """Drop the adapter and restore the original class (without merging)."""
    del module.adapter
    module.__class__ = module._peft_base_class
    module.__dict__.pop("_peft_update_position", None)


def trainable_parameters(model: ModelOrChunks) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for chunk in _chunks(model) for n, p in chunk.named_parameters() if p.requires_grad]


def merged_view(models: ModelOrChunks, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`params` (global name -> this rank's tensor of `models`, as the bridge collects them) as an HF export should
    see them: adapter tensors dropped, each adapted weight replaced by its exact merge - the model is not modified.

    The bridge's export hook: exporting a model that still carries adapters yields the merged model (what
    `merge_peft` would give), never the bare base with the adapters silently dropped. Collective under TP (DoRA).
    """
    names = {id(p): n for n, p in params.items()}
    out = {n: p for n, p in params.items() if ".adapter." not in n}
    with torch.no_grad():
        for _, linear in adapted_modules(models):  # named_modules() reaches through DDP-style wrappers too
            out[names[id(linear.weight)]] = linear.adapter.merged_weight(linear.weight).to(linear.weight.dtype)
    return out

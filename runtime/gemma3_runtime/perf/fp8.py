"""FP8 training (opt-in): the weight GEMMs of the decoder's parallel linears as torchao float8 matmuls.

WHAT: with `perf.fp8` = "tensorwise" or "rowwise", every trainable QKV, attention-output, fc1 and fc2 linear
(megatron ColumnParallelLinear / RowParallelLinear) computes its forward GEMM and both backward GEMMs through
torchao's `matmul_with_hp_or_float8_args`: each operand is cast to float8 with a scale computed from its current
values (dynamic scaling: per tensor, or per row with "rowwise"), multiplied by `torch._scaled_mm`, and the result
comes back in bf16. Weights, master weights, optimizer state and every other op stay as they are. The LM head, the
embedding, LoRA's frozen base weights and LoRA's adapters keep the bf16 path.

HOW: the linear's `_forward_impl` (megatron's per-module entry point to its linear function) is replaced on the
instance by `Fp8LinearImpl`, a named model hook; the model is rebuilt for every run, so nothing needs undoing.
The fp8 function takes the plain case only (TP 1 or a RowParallelLinear's local GEMM: no bias in the GEMM, no
dgrad all-reduce, no sequence parallel, no deferred wgrad, a trainable weight); every other call goes to megatron's
own function, unchanged. torchao's autograd function is `allow_in_graph`, so the compiled decoder layers keep it
in their graphs.

Gradient-accumulation fusion: the fp8 backward returns the weight gradient in bf16 and never sets
`grad_added_to_main_grad`, so megatron's DDP hook adds it into the fp32 main_grad (the unfused path) whether
`perf.grad_accum_fusion` is on or off; both switches compose, and fusion still applies to every linear fp8 skips.

WHY torchao: TransformerEngine (megatron's own FP8 path) has no installable build for this torch / CUDA; torchao's
float8 training is pure Python over `torch._scaled_mm`, so one abi3 wheel (0.18.0) serves torch 2.11 and 2.13 alike.

WHERE: CUDA devices of compute capability 8.9 or newer (float8 tensor cores). Elsewhere the switch is logged and
left off, unless `emulate=True` (tests: torchao's emulation computes the same casts and scales with a plain GEMM).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("gemma3_runtime.perf")

FP8_RECIPES = ("none", "tensorwise", "rowwise")
#: the decoder's linears (local-spec names, docs/CONTRACTS.md) whose weight GEMMs may run in float8
FP8_LINEAR_NAMES = frozenset({"linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"})


def fp8_unsupported(device: torch.device, emulate: bool = False) -> str | None:
    """Why float8 training cannot run on `device` (None when it can)."""
    if not emulate:
        if device.type != "cuda" or not torch.cuda.is_available():
            return "float8 matmuls need a CUDA device"
        index = torch.cuda.current_device() if device.index is None else device.index
        major, minor = torch.cuda.get_device_capability(index)
        if (major, minor) < (8, 9):
            return f"float8 matmuls need compute capability 8.9 or newer (this GPU has {major}.{minor})"
    try:
        import torchao.float8  # noqa: F401
    except Exception as exc:  # torchao's import can fail in more ways than ImportError (its C extensions)
        return f"torchao's float8 training is not importable ({type(exc).__name__}); install torchao (runtime extra)"
    return None


def torchao_config(recipe: str, emulate: bool = False) -> Any:
    """torchao's Float8LinearConfig for `recipe` ("tensorwise" or "rowwise": dynamic scaling of every operand)."""
    from torchao.float8 import Float8LinearConfig

    if recipe not in FP8_RECIPES[1:]:
        raise ValueError(f"perf.fp8: expected one of {', '.join(FP8_RECIPES)}, got {recipe!r}")
    config = Float8LinearConfig.from_recipe_name(recipe)
    if emulate:
        from dataclasses import replace

        config = replace(config, emulate=True)
    return config


class Fp8LinearImpl:
    """A parallel linear's `_forward_impl` whose plain case is torchao's float8 matmul (see module doc)."""

    def __init__(self, original: Any, config: Any) -> None:
        from torchao.float8.float8_training_tensor import LinearMMConfig, ScaledMMConfig

        self.original, self.config = original, config
        gemms = (config.gemm_config_output, config.gemm_config_grad_input, config.gemm_config_grad_weight)
        self.mm_config = LinearMMConfig(
            *(ScaledMMConfig(config.emulate, gemm.use_fast_accum, False, config.pad_inner_dim) for gemm in gemms)
        )

    def __call__(
        self,
        input: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        gradient_accumulation_fusion: bool = False,
        allreduce_dgrad: bool = False,
        sequence_parallel: bool = False,
        grad_output_buffer: list | None = None,
        wgrad_deferral_limit: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if (
            weight.requires_grad
            and bias is None
            and not allreduce_dgrad
            and not sequence_parallel
            and grad_output_buffer is None
            and (self.config.emulate or (input.numel() // input.shape[-1]) % 16 == 0)
        ):
            from torchao.float8.float8_linear import matmul_with_hp_or_float8_args

            return matmul_with_hp_or_float8_args.apply(input, weight.t(), self.mm_config, self.config)
        return self.original(
            input=input,
            weight=weight,
            bias=bias,
            gradient_accumulation_fusion=gradient_accumulation_fusion,
            allreduce_dgrad=allreduce_dgrad,
            sequence_parallel=sequence_parallel,
            grad_output_buffer=grad_output_buffer,
            wgrad_deferral_limit=wgrad_deferral_limit,
            **kwargs,
        )


def _gemm_dims_fit(module: torch.nn.Module) -> bool:
    """torch._scaled_mm needs every GEMM dim to be a multiple of 16: the weight's here, the token count at each
    call (`Fp8LinearImpl` sends other token counts to the bf16 path)."""
    weight = getattr(module, "weight", None)
    return weight is not None and weight.dim() == 2 and all(d % 16 == 0 for d in weight.shape)


def use_fp8_linears(models: list, recipe: str, emulate: bool = False) -> int:
    """Put `Fp8LinearImpl` on every decoder linear named in FP8_LINEAR_NAMES (LoRA adapters and the LM head are
    never among them); returns how many. Linears whose weight dims do not fit float8 GEMMs are left as they are."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    config = torchao_config(recipe, emulate)
    count = 0
    for model in models:
        for name, module in model.named_modules():
            if not isinstance(module, ColumnParallelLinear | RowParallelLinear):
                continue
            already = isinstance(module.__dict__.get("_forward_impl"), Fp8LinearImpl)
            if already or name.rsplit(".", 1)[-1] not in FP8_LINEAR_NAMES:
                continue
            if not emulate and not _gemm_dims_fit(module):
                log.info("fp8: %s keeps bf16 (weight %s is not a multiple of 16)", name, tuple(module.weight.shape))
                continue
            module._forward_impl = Fp8LinearImpl(module._forward_impl, config)
            count += 1
    return count

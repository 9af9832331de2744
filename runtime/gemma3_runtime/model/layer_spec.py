"""The Gemma 3 transformer-block spec on megatron-core's local (non-TransformerEngine) modules.

Module names are the local-spec names in docs/CONTRACTS.md (input_layernorm, self_attention.linear_qkv, ...,
linear_proj.post_layernorm, pre_mlp_layernorm, mlp.linear_fc1/fc2, fc2.post_layernorm, final_layernorm).
"""

from __future__ import annotations

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel import ColumnParallelLinear
from megatron.core.transformer.attention import SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from .attention import Gemma3CoreAttention, Gemma3SelfAttention
from .layers import PostNormRowParallelLinear
from .norm import Gemma3RMSNorm


def gemma3_layer_spec() -> ModuleSpec:
    """One decoder layer: sandwich norms (pre + post) around attention and MLP, residual adds by megatron's bda."""
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=Gemma3RMSNorm,
            self_attention=ModuleSpec(
                module=Gemma3SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear,
                    core_attention=Gemma3CoreAttention,
                    linear_proj=PostNormRowParallelLinear,
                    q_layernorm=Gemma3RMSNorm,
                    k_layernorm=Gemma3RMSNorm,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=Gemma3RMSNorm,
            mlp=ModuleSpec(
                module=MLP,
                submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=PostNormRowParallelLinear),
            ),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def gemma3_block_spec(config, vp_stage: int | None = None, pp_rank: int | None = None) -> TransformerBlockSubmodules:
    """The layers this pipeline stage builds plus Gemma's (1+w) final norm (megatron's default would be plain)."""
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)
    return TransformerBlockSubmodules(layer_specs=[gemma3_layer_spec()] * num_layers, layer_norm=Gemma3RMSNorm)

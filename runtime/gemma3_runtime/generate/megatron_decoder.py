"""`Decoder` over our megatron `Gemma3Model` (one pipeline stage, any tensor-parallel size).

It calls the model's own submodules - input norm, `get_query_key_value_tensors` (fused QKV, q/k norms, kv heads
< TP handled by megatron), the model's dual RoPE, `linear_proj` with its post-norm, pre-MLP norm, MLP with its
post-norm, final norm, tied output layer - so weights, TP communication and PEFT adapters (which wrap those
linears) are exactly the model's; only attention over the cache is the engine's. Hidden states stay megatron's
[s, b, D]. Layers whose linears are exactly our spec's at TP=1 (no adapter, no bias) run the same weights through
plain `F.linear` calls instead (`_is_plain`): the module wrappers are pure Python overhead there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, gather_from_tensor_model_parallel_region
from megatron.core.transformer.mlp import MLP

from gemma3_runtime.generate.decoder import DecoderInfo
from gemma3_runtime.model.layers import PostNormRowParallelLinear, gelu_tanh
from gemma3_runtime.model.rope import rotate_half
from gemma3_runtime.model.wrapping import unwrap


class MegatronGemma3Decoder:
    def __init__(self, model: torch.nn.Module) -> None:
        model = unwrap(model)
        self.model = model
        if not (model.pre_process and model.post_process):
            raise NotImplementedError(
                "generation runs one pipeline stage holding all layers "
                "(pipeline_model_parallel_size=1); use tensor parallelism to split a model"
            )
        tconfig = model.config
        if tconfig.sequence_parallel:
            raise NotImplementedError("generation does not use sequence parallelism; build the model without it")
        self.layers = list(model.decoder.layers)
        layer_types = tconfig.gemma3_layer_types
        sliding = tuple(layer_types[layer.layer_number - 1] == "sliding_attention" for layer in self.layers)
        attn = self.layers[0].self_attention
        self.tp = model.pg_collection.tp
        # per layer: may its linears run as plain F.linear calls? (see _plain_mlp)
        self.plain = [_is_plain(block, self.tp.size()) for block in self.layers]
        weight = model.embedding.word_embeddings.weight
        # CPU: the fused QKV and gate|up GEMMs run slower than their parts (MKL, 2 cores: 12% for fc1 at 128 rows),
        # so plain layers multiply by row slices of the fused weights there (views, no copies); GPUs keep the fusion
        self.split_fused = weight.device.type == "cpu"
        self.info = DecoderInfo(
            sliding=sliding,
            window=int(tconfig.gemma3_sliding_window),
            num_heads=int(attn.num_attention_heads_per_partition),
            num_kv_heads=int(attn.num_query_groups_per_partition),
            head_dim=int(attn.hidden_size_per_attention_head),
            softmax_scale=float(self.layers[0].self_attention.core_attention.softmax_scale),
            vocab_size=int(model.hf_vocab_size),
            max_positions=int(model.max_sequence_length),
            dtype=weight.dtype,
            device=weight.device,
        )

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model._scaled_embedding(input_ids, None)  # [s, b, D]; RoPE, not learned positions

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(cos, sin in fp32, cos, sin in the activation dtype), each [2, s, b, 1, d] (local, global): computed ONCE
        per forward as `apply_rotary` computes them - which would redo both for q and k of every layer."""
        angles = self.model.rotary_pos_emb(positions)  # [2, s, b, 1, d] fp32
        cos, sin = angles.cos(), angles.sin()
        return cos, sin, cos.to(self.info.dtype), sin.to(self.info.dtype)

    def qkv(self, layer: int, hidden: torch.Tensor, rotary: tuple[torch.Tensor, ...]):
        block = self.layers[layer]
        attn = block.self_attention
        normed = block.input_layernorm(hidden)
        if self.plain[layer]:
            query, key, value = _plain_qkv(attn, normed, self.split_fused)
        else:
            query, key, value = attn.get_query_key_value_tensors(normed)  # [s, b, heads, d]
        query, key = _rotate(query, rotary, attn.rope_index), _rotate(key, rotary, attn.rope_index)
        return query.permute(1, 2, 0, 3), key.permute(1, 2, 0, 3), value.permute(1, 2, 0, 3)

    def finish_layer(self, layer: int, hidden: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        block = self.layers[layer]
        b, h, s, d = attention.shape
        context = attention.permute(2, 0, 1, 3).reshape(s, b, h * d)
        if self.plain[layer]:
            proj = block.self_attention.linear_proj
            hidden = hidden + proj.post_layernorm(F.linear(context, proj.weight))
            return hidden + _plain_mlp(block.mlp, block.pre_mlp_layernorm(hidden), self.split_fused)
        out, bias = block.self_attention.linear_proj(context)
        hidden = hidden + (out if bias is None else out + bias)
        out, bias = block.mlp(block.pre_mlp_layernorm(hidden))
        return hidden + (out if bias is None else out + bias)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        model = self.model
        last = model.decoder.final_layernorm(hidden[-1:])
        logits, _ = model.output_layer(
            last, weight=model.shared_embedding_or_output_weight(), runtime_gather_output=False
        )  # [1, b, V_pad / tp]
        if self.tp.size() > 1:
            logits = gather_from_tensor_model_parallel_region(logits, group=self.tp)
        return logits[0, :, : self.info.vocab_size]


def _is_plain(block: torch.nn.Module, tp_size: int) -> bool:
    """True when the layer's projection and MLP are exactly our spec's bias-free linears at TP=1 (no PEFT adapter:
    an adapted linear's class is a generated subclass) and the MLP is Gemma's GeGLU."""
    attn, proj, mlp = block.self_attention, block.self_attention.linear_proj, block.mlp
    return (
        tp_size == 1
        and type(attn.linear_qkv) is ColumnParallelLinear
        and attn.linear_qkv.bias is None
        and not attn.config.test_mode
        and type(mlp) is MLP
        and mlp.config.gated_linear_unit
        and mlp.config.activation_func is gelu_tanh
        and type(mlp.linear_fc1) is ColumnParallelLinear
        and type(mlp.linear_fc2) is PostNormRowParallelLinear
        and type(proj) is PostNormRowParallelLinear
        and all(m.bias is None for m in (proj, mlp.linear_fc1, mlp.linear_fc2))
    )


def _plain_qkv(attn: torch.nn.Module, x: torch.Tensor, split: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """megatron's `get_query_key_value_tensors` at TP=1 without its linear wrapper (see `_plain_mlp`): fused QKV,
    per kv group [q heads of the group | k | v], q/k norms -> [s, b, heads, d] each. `split` (one kv group only,
    where each part is a contiguous row block): three GEMMs on row slices of the fused weight."""
    groups, head_dim = attn.num_query_groups_per_partition, attn.hidden_size_per_attention_head
    per_group = attn.num_attention_heads_per_partition // groups
    weight, sizes = attn.linear_qkv.weight, [per_group * head_dim, head_dim, head_dim]
    if split and groups == 1:
        query, key, value = (F.linear(x, w).unsqueeze(-2) for w in torch.split(weight, sizes))
    else:
        mixed = F.linear(x, weight)
        mixed = mixed.view(*mixed.shape[:-1], groups, (per_group + 2) * head_dim)
        query, key, value = torch.split(mixed, sizes, dim=3)
    query = query.reshape(query.size(0), query.size(1), -1, head_dim)
    if attn.q_layernorm is not None:
        query = attn.q_layernorm(query)
    if attn.k_layernorm is not None:
        key = attn.k_layernorm(key)
    return query, key, value


def _plain_mlp(mlp: torch.nn.Module, x: torch.Tensor, split: bool) -> torch.Tensor:
    """megatron's MLP forward for `_is_plain` layers, as plain F.linear calls: the same ops without megatron's
    per-linear autograd-function and TP-region wrappers, which cost ~90 us per row-parallel call on a CPU - ~4% of
    the 270M's decode step there (on CUDA the compiled, graph-captured step pays no per-call Python either way)."""
    if split:  # [gate; up] rows: two GEMMs on the halves (see MegatronGemma3Decoder.split_fused)
        gate, up = (F.linear(x, w) for w in torch.chunk(mlp.linear_fc1.weight, 2, dim=0))
    else:
        gate, up = torch.chunk(F.linear(x, mlp.linear_fc1.weight), 2, dim=-1)
    fc2 = mlp.linear_fc2
    return fc2.post_layernorm(F.linear(gelu_tanh(gate) * up, fc2.weight))


def _rotate(x: torch.Tensor, rotary: tuple[torch.Tensor, ...], index: int) -> torch.Tensor:
    """`apply_rotary(x, angles[index])` with the precomputed cos/sin: fp32 values cast to x's dtype, as it does."""
    cos32, sin32, cos, sin = rotary
    if x.dtype != cos.dtype:
        cos, sin = cos32.to(x.dtype), sin32.to(x.dtype)
    return x * cos[index] + rotate_half(x) * sin[index]

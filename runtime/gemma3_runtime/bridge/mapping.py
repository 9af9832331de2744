"""THE table of Megatron <-> HF parameter names for Gemma 3 text models (docs/CONTRACTS.md names).

One row per Megatron parameter: its name pattern, the HF name(s) it is made of (relative to the text model's
prefix), and how values move between them. `{layer}` is the GLOBAL 0-based layer index on both sides.
The engine is the only consumer; nothing else hard-codes these names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum


class Transform(str, Enum):
    """How a Megatron tensor relates to its HF tensor(s), and how it is split over TP ranks."""

    REPLICATED = "replicated"  # identity, every TP rank holds it whole (norm weights)
    VOCAB = "vocab"  # identity + pad/trim rows to the padded vocabulary; vocab-parallel on dim 0
    ROW = "row"  # identity; row-parallel: split on dim 1
    QKV = "qkv"  # q,k,v -> [q x n, k, v] per query group; column-parallel on dim 0
    GATE_UP = "gate_up"  # gate,up -> cat(gate_i, up_i) per TP shard; column-parallel on dim 0


@dataclass(frozen=True)
class ParamMapping:
    megatron: str
    hf: tuple[str, ...]
    transform: Transform

    @property
    def per_layer(self) -> bool:
        return "{layer}" in self.megatron

    def megatron_name(self, layer: int | None = None) -> str:
        return self.megatron.format(layer=layer)

    def hf_names(self, prefix: str, layer: int | None = None) -> tuple[str, ...]:
        return tuple(prefix + name.format(layer=layer) for name in self.hf)


_L = "decoder.layers.{layer}."
_H = "layers.{layer}."

GEMMA3_MAPPINGS: tuple[ParamMapping, ...] = (
    ParamMapping("embedding.word_embeddings.weight", ("embed_tokens.weight",), Transform.VOCAB),
    ParamMapping(_L + "input_layernorm.weight", (_H + "input_layernorm.weight",), Transform.REPLICATED),
    ParamMapping(
        _L + "self_attention.linear_qkv.weight",
        (_H + "self_attn.q_proj.weight", _H + "self_attn.k_proj.weight", _H + "self_attn.v_proj.weight"),
        Transform.QKV,
    ),
    ParamMapping(_L + "self_attention.q_layernorm.weight", (_H + "self_attn.q_norm.weight",), Transform.REPLICATED),
    ParamMapping(_L + "self_attention.k_layernorm.weight", (_H + "self_attn.k_norm.weight",), Transform.REPLICATED),
    ParamMapping(_L + "self_attention.linear_proj.weight", (_H + "self_attn.o_proj.weight",), Transform.ROW),
    ParamMapping(
        _L + "self_attention.linear_proj.post_layernorm.weight",
        (_H + "post_attention_layernorm.weight",),
        Transform.REPLICATED,
    ),
    ParamMapping(_L + "pre_mlp_layernorm.weight", (_H + "pre_feedforward_layernorm.weight",), Transform.REPLICATED),
    ParamMapping(
        _L + "mlp.linear_fc1.weight", (_H + "mlp.gate_proj.weight", _H + "mlp.up_proj.weight"), Transform.GATE_UP
    ),
    ParamMapping(_L + "mlp.linear_fc2.weight", (_H + "mlp.down_proj.weight",), Transform.ROW),
    ParamMapping(
        _L + "mlp.linear_fc2.post_layernorm.weight", (_H + "post_feedforward_layernorm.weight",), Transform.REPLICATED
    ),
    ParamMapping("decoder.final_layernorm.weight", ("norm.weight",), Transform.REPLICATED),
)

#: The last PP stage's copy of the tied embedding: loaded from the embedding, never exported.
OUTPUT_LAYER = ParamMapping("output_layer.weight", ("embed_tokens.weight",), Transform.VOCAB)

#: HF tensors that exist in some checkpoints but carry nothing we keep (the LM head is tied to the embedding).
IGNORED_HF_SUFFIXES: tuple[str, ...] = ("lm_head.weight",)

#: Text-model prefixes, by checkpoint kind. Multimodal (4B+) checkpoints carry the text model under
#: `language_model` (transformers 4.x hub layout) or `model.language_model` (transformers >= 4.52 / 5.x save layout).
CAUSAL_LM_PREFIX = "model."
MULTIMODAL_PREFIXES: tuple[str, ...] = ("language_model.model.", "model.language_model.")


def detect_text_prefix(hf_names: Iterable[str]) -> str:
    """The prefix under which the text model's tensors live; raises ValueError if there is no Gemma text model."""
    names = set(hf_names)
    for prefix in (CAUSAL_LM_PREFIX, *MULTIMODAL_PREFIXES):
        if prefix + "embed_tokens.weight" in names:
            return prefix
    raise ValueError("no text-model embedding (embed_tokens.weight) among the checkpoint's tensors")


def is_multimodal_prefix(prefix: str) -> bool:
    return prefix in MULTIMODAL_PREFIXES


def expand(num_layers: int, layers: Iterable[int] | None = None) -> Iterator[tuple[ParamMapping, int | None]]:
    """Every (mapping, layer) pair of a model with `num_layers` layers; per-layer rows only for `layers`."""
    wanted = range(num_layers) if layers is None else layers
    for mapping in GEMMA3_MAPPINGS:
        if mapping.per_layer:
            for layer in wanted:
                yield mapping, layer
        else:
            yield mapping, None


_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.*)$")


def split_layer_name(megatron_name: str) -> tuple[int | None, str]:
    """`decoder.layers.7.mlp.linear_fc1.weight` -> (7, 'mlp.linear_fc1.weight'); non-layer names -> (None, name)."""
    match = _LAYER_RE.match(megatron_name)
    if not match:
        return None, megatron_name
    return int(match.group(1)), match.group(2)


def all_hf_names(num_layers: int, prefix: str = CAUSAL_LM_PREFIX) -> list[str]:
    """Every HF tensor name a text-only checkpoint of this depth must have (what export writes)."""
    names: list[str] = []
    for mapping, layer in expand(num_layers):
        names.extend(mapping.hf_names(prefix, layer))
    return names

"""The mapping table: names per docs/CONTRACTS.md, every HF tensor of a Gemma3ForCausalLM covered exactly once."""

import pytest

from gemma3_runtime.bridge import mapping as M

pytestmark = pytest.mark.unit

CONTRACT_NAMES = [
    "embedding.word_embeddings.weight",
    "decoder.layers.{i}.input_layernorm.weight",
    "decoder.layers.{i}.self_attention.linear_qkv.weight",
    "decoder.layers.{i}.self_attention.q_layernorm.weight",
    "decoder.layers.{i}.self_attention.k_layernorm.weight",
    "decoder.layers.{i}.self_attention.linear_proj.weight",
    "decoder.layers.{i}.self_attention.linear_proj.post_layernorm.weight",
    "decoder.layers.{i}.pre_mlp_layernorm.weight",
    "decoder.layers.{i}.mlp.linear_fc1.weight",
    "decoder.layers.{i}.mlp.linear_fc2.weight",
    "decoder.layers.{i}.mlp.linear_fc2.post_layernorm.weight",
    "decoder.final_layernorm.weight",
]


def test_megatron_names_are_the_contract_names():
    assert [m.megatron.replace("{layer}", "{i}") for m in M.GEMMA3_MAPPINGS] == CONTRACT_NAMES


def test_hf_names_cover_a_causal_lm_once():
    names = M.all_hf_names(num_layers=2)
    assert len(names) == len(set(names)) == 2 + 2 * 13
    assert "model.layers.1.self_attn.v_proj.weight" in names
    assert "model.layers.0.post_feedforward_layernorm.weight" in names


@pytest.mark.parametrize("prefix", ["model.", "language_model.model.", "model.language_model."])
def test_detect_text_prefix(prefix):
    names = [prefix + "embed_tokens.weight", "vision_tower.x", "lm_head.weight"]
    assert M.detect_text_prefix(names) == prefix
    assert M.is_multimodal_prefix(prefix) == (prefix != "model.")


def test_detect_text_prefix_refuses_other_models():
    with pytest.raises(ValueError, match="embed_tokens"):
        M.detect_text_prefix(["transformer.wte.weight"])


def test_split_layer_name():
    assert M.split_layer_name("decoder.layers.17.mlp.linear_fc1.weight") == (17, "mlp.linear_fc1.weight")
    assert M.split_layer_name("decoder.final_layernorm.weight") == (None, "decoder.final_layernorm.weight")

"""Our megatron Gemma 3 vs transformers' Gemma3ForCausalLM on tiny random models (every norm randomised), plus the
Gemma-specific semantics one by one: window size, embedding scale, RoPE per layer type, kernels."""

from __future__ import annotations

import math

import pytest
import torch
from model_helpers import build_model, copy_hf_into_megatron, hf_model, tiny_config

pytestmark = pytest.mark.unit

SEQ = 40  # 5x the window of 8: crosses it many times and reaches both global layers (2 and 5)


def _ids(cfg, batch=2, seq=SEQ, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)


@pytest.mark.parametrize("kernel", ["eager", "sdpa", "flex"])
@pytest.mark.parametrize("scaling", [1.0, 8.0])
def test_logits_match_transformers(kernel, scaling):
    cfg = tiny_config(scaling=scaling)
    hf = hf_model(cfg)
    model = build_model(cfg, attention_kernel=kernel)
    copy_hf_into_megatron(hf, model, cfg)
    ids = _ids(cfg)
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        ours = model(input_ids=ids, position_ids=torch.arange(SEQ).expand(2, SEQ))
    assert ours.shape == (2, SEQ, cfg.vocab_size)
    assert (ours - ref).abs().max().item() <= 1e-5


def test_parity_inputs_are_sensitive_to_window_and_rope():
    """The comparison above would catch an off-by-one window or a wrong local RoPE base."""
    cfg = tiny_config()
    ids = _ids(cfg)
    with torch.no_grad():
        ref = hf_model(cfg)(input_ids=ids).logits
        for wrong in (tiny_config(window=9), tiny_config(window=7)):
            assert (hf_model(wrong)(input_ids=ids).logits - ref).abs().max() > 1e-3
        import dataclasses

        wrong_rope = dataclasses.replace(cfg, rope_local_base=1e6)
        assert (hf_model(wrong_rope)(input_ids=ids).logits - ref).abs().max() > 1e-3


def test_bf16_embedding_scale_is_rounded_to_bf16():
    cfg = tiny_config(hidden=48)  # sqrt(48) = 6.928..., bf16 6.9375
    model = build_model(cfg, params_dtype=torch.bfloat16)
    ids = _ids(cfg, batch=1, seq=5)
    emb = model._scaled_embedding(ids, torch.arange(5)[None])  # [s, b, D]
    rows = model.embedding.word_embeddings.weight[ids[0]]
    bf16_scale = torch.tensor(math.sqrt(cfg.hidden_size), dtype=torch.bfloat16)
    assert bf16_scale.item() != math.sqrt(cfg.hidden_size)
    assert torch.equal(emb[:, 0], rows * bf16_scale)


def test_sliding_window_counts_the_query_itself():
    from gemma3_runtime.model.attention import allowed_mask

    mask = allowed_mask(20, 20, 8, None, "cpu")[0, 0]
    assert mask.sum(-1).tolist() == [min(i + 1, 8) for i in range(20)]
    assert mask[19, 12] and not mask[19, 11]  # keys 12..19: W=8 keys including query 19
    decode = allowed_mask(1, 20, 8, None, "cpu")[0, 0]
    assert torch.equal(decode[0], mask[19])


def test_global_and_local_layers_follow_layer_types():
    from gemma3_runtime.model.rope import GLOBAL, LOCAL

    cfg = tiny_config()
    model = build_model(cfg)
    for layer in model.decoder.layers:
        i = layer.layer_number - 1
        attn = layer.self_attention
        assert attn.core_attention.window == (cfg.sliding_window if cfg.is_sliding(i) else None)
        assert attn.rope_index == (LOCAL if cfg.is_sliding(i) else GLOBAL)
    assert [layer.self_attention.core_attention.window is None for layer in model.decoder.layers] == [
        not cfg.is_sliding(i) for i in range(cfg.num_layers)
    ]


def test_rope_angles_use_position_ids_and_linear_scaling_only_on_global():
    from gemma3_runtime.model.rope import Gemma3RotaryEmbedding

    rope = Gemma3RotaryEmbedding(32, 1e4, 1e6, 8.0)
    pos = torch.tensor([[0, 1, 2], [5, 6, 7]])
    angles = rope(pos)  # [2, s, b, 1, d]
    assert angles.shape == (2, 3, 2, 1, 32)
    assert torch.equal(angles[:, 0, 1], rope(torch.tensor([[5]]))[:, 0, 0])
    inv_local = 1.0 / (1e4 ** (torch.arange(0, 32, 2).float() / 32))
    inv_global = 1.0 / (1e6 ** (torch.arange(0, 32, 2).float() / 32)) / 8.0
    assert torch.allclose(angles[0, 1, 0, 0, :16], inv_local)
    assert torch.allclose(angles[1, 1, 0, 0, :16], inv_global)

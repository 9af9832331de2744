"""WeightEngine on a stand-in module tree with megatron's parameter names and shapes (no process group needed):
per-rank TP loading, global layer numbering under PP, dtype cast with a single warning, export at TP=1."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from gemma3_runtime.bridge import transforms as T
from gemma3_runtime.bridge.engine import Parallelism, WeightEngine, megatron_params
from gemma3_runtime.bridge.safetensors_io import HFTensorReader, ShardedSafetensorsWriter
from gemma3_runtime.errors import UserInputError

pytestmark = pytest.mark.unit


def _param(*shape, dtype=torch.float32):
    return nn.Parameter(torch.full(shape, float("nan"), dtype=dtype))


class _Layer(nn.Module):
    """Only the parameter names/shapes of one megatron TransformerLayer (our local spec)."""

    def __init__(self, cfg, tp: int, layer_number: int, dtype) -> None:
        super().__init__()
        d, hd, f = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
        qkv = (cfg.num_attention_heads + 2 * cfg.num_kv_heads) * hd
        self.layer_number = layer_number
        self.input_layernorm = nn.Module()
        self.input_layernorm.weight = _param(d, dtype=dtype)
        att = self.self_attention = nn.Module()
        att.linear_qkv = nn.Module()
        att.linear_qkv.weight = _param(qkv // tp, d, dtype=dtype)
        att.q_layernorm, att.k_layernorm = nn.Module(), nn.Module()
        att.q_layernorm.weight = _param(hd, dtype=dtype)
        att.k_layernorm.weight = _param(hd, dtype=dtype)
        att.linear_proj = nn.Module()
        att.linear_proj.weight = _param(d, cfg.num_attention_heads * hd // tp, dtype=dtype)
        att.linear_proj.post_layernorm = nn.Module()
        att.linear_proj.post_layernorm.weight = _param(d, dtype=dtype)
        self.pre_mlp_layernorm = nn.Module()
        self.pre_mlp_layernorm.weight = _param(d, dtype=dtype)
        mlp = self.mlp = nn.Module()
        mlp.linear_fc1, mlp.linear_fc2 = nn.Module(), nn.Module()
        mlp.linear_fc1.weight = _param(2 * f // tp, d, dtype=dtype)
        mlp.linear_fc2.weight = _param(d, f // tp, dtype=dtype)
        mlp.linear_fc2.post_layernorm = nn.Module()
        mlp.linear_fc2.post_layernorm.weight = _param(d, dtype=dtype)


class _Model(nn.Module):
    def __init__(self, cfg, tp: int = 1, layers=None, dtype=torch.float32) -> None:
        super().__init__()
        layers = list(range(cfg.num_layers)) if layers is None else layers
        first, last = layers[0] == 0, layers[-1] == cfg.num_layers - 1
        if first:
            self.embedding = nn.Module()
            self.embedding.word_embeddings = nn.Module()
            self.embedding.word_embeddings.weight = _param(cfg.padded_vocab_size // tp, cfg.hidden_size, dtype=dtype)
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList(_Layer(cfg, tp, i + 1, dtype) for i in layers)
        if last:
            self.decoder.final_layernorm = nn.Module()
            self.decoder.final_layernorm.weight = _param(cfg.hidden_size, dtype=dtype)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from model_helpers import hf_model, tiny_config

    cfg = tiny_config(num_layers=3, vocab=300, heads=4, kv_heads=1)
    state = {k: v.contiguous() for k, v in hf_model(cfg).state_dict().items() if k != "lm_head.weight"}
    path = tmp_path_factory.mktemp("engine") / "hf"
    path.mkdir()
    writer = ShardedSafetensorsWriter(path, max_shard_bytes=100_000)  # several shards + index
    writer.add_all(state.items())
    assert len(writer.close()) > 1
    return cfg, state, path


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_ranks_load_exactly_their_shards(tiny, tp):
    cfg, state, path = tiny
    shards = []
    with HFTensorReader(path) as reader:
        for rank in range(tp):
            model = _Model(cfg, tp=tp)
            WeightEngine(cfg, Parallelism(tp_rank=rank, tp_size=tp)).load([model], reader, "model.")
            shards.append(megatron_params([model]))
    h = "model.layers.1."
    fused_qkv = T.fuse_qkv(
        state[h + "self_attn.q_proj.weight"],
        state[h + "self_attn.k_proj.weight"],
        state[h + "self_attn.v_proj.weight"],
        cfg.num_attention_heads,
        cfg.num_kv_heads,
    )
    got_qkv = torch.cat([s["decoder.layers.1.self_attention.linear_qkv.weight"] for s in shards])
    assert torch.equal(got_qkv, fused_qkv)
    gate, up = T.split_gate_up(torch.cat([s["decoder.layers.1.mlp.linear_fc1.weight"] for s in shards]), tp)
    assert torch.equal(gate, state[h + "mlp.gate_proj.weight"]) and torch.equal(up, state[h + "mlp.up_proj.weight"])
    proj = torch.cat([s["decoder.layers.1.self_attention.linear_proj.weight"] for s in shards], dim=1)
    assert torch.equal(proj, state[h + "self_attn.o_proj.weight"])
    emb = torch.cat([s["embedding.word_embeddings.weight"] for s in shards])
    assert emb.shape[0] == 384 and torch.equal(emb[:300], state["model.embed_tokens.weight"])
    assert torch.count_nonzero(emb[300:]) == 0
    for s in shards:
        assert torch.equal(s["decoder.layers.2.input_layernorm.weight"], state["model.layers.2.input_layernorm.weight"])


def test_pipeline_stage_uses_global_layer_numbers(tiny):
    cfg, state, path = tiny
    stage = _Model(cfg, layers=[2])  # last stage: local layer 0 is global layer 2
    with HFTensorReader(path) as reader:
        WeightEngine(cfg).load([stage], reader, "model.")
    params = megatron_params([stage])
    assert "decoder.layers.2.mlp.linear_fc2.weight" in params and "embedding.word_embeddings.weight" not in params
    assert torch.equal(params["decoder.layers.2.mlp.linear_fc2.weight"], state["model.layers.2.mlp.down_proj.weight"])


def test_cast_warns_once_and_export_round_trips(tiny, caplog):
    cfg, state, path = tiny
    model = _Model(cfg, dtype=torch.bfloat16)
    with caplog.at_level(logging.WARNING), HFTensorReader(path) as reader:
        WeightEngine(cfg).load([model], reader, "model.")
    assert sum("casting HF weights" in r.getMessage() for r in caplog.records) == 1
    exported = dict(WeightEngine(cfg).export([model]))
    assert sorted(exported) == sorted(state)
    for name, tensor in state.items():
        assert torch.equal(exported[name], tensor.to(torch.bfloat16)), name


def test_shape_mismatch_names_the_tensors(tiny):
    cfg, _, path = tiny
    from dataclasses import replace

    wrong = replace(cfg, intermediate_size=cfg.intermediate_size * 2)
    with HFTensorReader(path) as reader, pytest.raises(UserInputError, match="does config.json match"):
        WeightEngine(wrong).load([_Model(wrong)], reader, "model.")

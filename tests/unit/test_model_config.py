"""Gemma3Config: HF config.json layouts (4.x, 5.x, multimodal), presets, export, run_config round trip, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gemma3_runtime.model.config import FULL, SLIDING, Gemma3Config, Gemma3ConfigError, default_layer_types

pytestmark = pytest.mark.unit

HF_270M_5X = {  # what transformers 5.24 writes for google/gemma-3-270m
    "architectures": ["Gemma3ForCausalLM"],
    "model_type": "gemma3_text",
    "vocab_size": 262144,
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-06,
    "query_pre_attn_scalar": 256,
    "sliding_window": 512,
    "rope_parameters": {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
    },
    "layer_types": list(default_layer_types(18)),
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
}

HF_4B_4X_MULTIMODAL = {  # a transformers 4.5x Gemma3ForConditionalGeneration config: text_config omits defaults
    "architectures": ["Gemma3ForConditionalGeneration"],
    "model_type": "gemma3",
    "text_config": {
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "model_type": "gemma3_text",
        "num_hidden_layers": 34,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
    },
    "vision_config": {"model_type": "siglip_vision_model"},
}


def test_from_hf_5x_layout_matches_preset():
    cfg = Gemma3Config.from_hf(HF_270M_5X)
    assert cfg == Gemma3Config.preset("270m")
    assert cfg.global_layers == (5, 11, 17)
    assert cfg.softmax_scale == 1 / 16
    assert not cfg.from_multimodal


def test_from_hf_multimodal_takes_text_part_with_hf_defaults():
    cfg = Gemma3Config.from_hf(HF_4B_4X_MULTIMODAL)
    assert cfg.from_multimodal
    assert cfg == Gemma3Config.preset("4b")  # vocab 262208, 8/4 heads, 131072 positions from HF defaults
    assert cfg.vocab_size == 262208 and cfg.padded_vocab_size == 262272
    assert cfg.rope_global_scaling_factor == 8.0 and cfg.rope_local_base == 1e4
    assert cfg.global_layers == (5, 11, 17, 23, 29)


def test_from_hf_4x_layout_with_sliding_window_pattern():
    hf = {k: v for k, v in HF_270M_5X.items() if k not in ("rope_parameters", "layer_types")}
    hf.update(
        rope_theta=500000.0,
        rope_local_base_freq=20000.0,
        sliding_window_pattern=3,
        rope_scaling={"type": "linear", "factor": 4.0},
    )
    cfg = Gemma3Config.from_hf(hf)
    assert cfg.global_layers == tuple(range(2, 18, 3))
    assert (cfg.rope_local_base, cfg.rope_global_base, cfg.rope_global_scaling_factor) == (20000.0, 500000.0, 4.0)


def test_from_hf_honours_explicit_layer_types():
    types = [SLIDING] * 18
    types[0] = types[9] = FULL
    cfg = Gemma3Config.from_hf({**HF_270M_5X, "layer_types": types, "sliding_window_pattern": 6})
    assert cfg.global_layers == (0, 9)
    assert not cfg.is_sliding(0) and cfg.is_sliding(5)


def test_from_hf_5x_linear_rope_on_full_attention():
    hf = {
        **HF_270M_5X,
        "rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    }
    assert Gemma3Config.from_hf(hf).rope_global_scaling_factor == 8.0


@pytest.mark.parametrize(
    "size,layers,hidden,heads,kv,head_dim,qpas,window,vocab,positions,factor,n_global",
    [
        ("270m", 18, 640, 4, 1, 256, 256, 512, 262144, 32768, 1.0, 3),
        ("1b", 26, 1152, 4, 1, 256, 256, 512, 262144, 32768, 1.0, 4),
        ("4b", 34, 2560, 8, 4, 256, 256, 1024, 262208, 131072, 8.0, 5),
        ("12b", 48, 3840, 16, 8, 256, 256, 1024, 262208, 131072, 8.0, 8),
        ("27b", 62, 5376, 32, 16, 128, 168, 1024, 262208, 131072, 8.0, 10),
    ],
)
def test_presets_match_reference_table(
    size, layers, hidden, heads, kv, head_dim, qpas, window, vocab, positions, factor, n_global
):
    cfg = Gemma3Config.preset(size)
    assert (
        cfg.num_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.query_pre_attn_scalar,
        cfg.sliding_window,
        cfg.vocab_size,
        cfg.max_position_embeddings,
        cfg.rope_global_scaling_factor,
    ) == (layers, hidden, heads, kv, head_dim, qpas, window, vocab, positions, factor)
    assert len(cfg.global_layers) == n_global and cfg.global_layers[0] == 5
    assert cfg.padded_vocab_size % 128 == 0 and cfg.padded_vocab_size - cfg.vocab_size < 128


def test_270m_parameter_count_matches_the_real_model():
    assert Gemma3Config.preset("270m").num_parameters() == 268_098_176  # test-assets.md


@pytest.mark.parametrize("layout", ["5.x", "4.x"])
@pytest.mark.parametrize("size", ["270m", "27b"])
def test_to_hf_round_trips_and_loads_in_transformers(layout, size):
    from transformers import Gemma3TextConfig

    cfg = Gemma3Config.preset(size)
    hf = cfg.to_hf(layout=layout)
    assert hf["model_type"] == "gemma3_text" and hf["architectures"] == ["Gemma3ForCausalLM"]
    assert hf["layer_types"] == list(cfg.layer_types)
    assert Gemma3Config.from_hf(hf) == cfg
    loaded = Gemma3TextConfig(**{k: v for k, v in hf.items() if k != "model_type"})
    assert loaded.layer_types == list(cfg.layer_types)
    assert loaded.rope_parameters["full_attention"]["rope_theta"] == cfg.rope_global_base
    assert loaded.rope_parameters["sliding_attention"]["rope_theta"] == cfg.rope_local_base
    assert loaded.rope_parameters["full_attention"].get("factor", 1.0) == cfg.rope_global_scaling_factor
    assert loaded.query_pre_attn_scalar == cfg.query_pre_attn_scalar
    assert Gemma3Config.from_hf(loaded.to_dict()) == cfg


def test_to_dict_from_dict_round_trip_is_yaml_safe():
    import yaml

    cfg = Gemma3Config.from_hf(HF_4B_4X_MULTIMODAL)
    again = Gemma3Config.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg and again.from_multimodal


@pytest.mark.parametrize(
    "hf,needle",
    [
        ({"model_type": "llama", "hidden_size": 4096}, "model_type 'llama' is not Gemma 3"),
        ({**HF_270M_5X, "layer_types": [SLIDING] * 17}, "layer_types has 17 entries, expected num_layers=18"),
        ({**HF_270M_5X, "layer_types": ["chunked_attention"] * 18}, "layer_types contains ['chunked_attention']"),
        ({**HF_270M_5X, "final_logit_softcapping": 30.0}, "final_logit_softcapping=30.0 is unsupported"),
        ({**HF_270M_5X, "num_key_value_heads": 3}, "num_kv_heads=3, expected a divisor of num_attention_heads (4)"),
        (
            {**HF_270M_5X, "rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 4.0}}},
            "rope_type='yarn' is unsupported",
        ),
        ({"model_type": "gemma3"}, "needs a 'text_config' object"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_from_hf_errors_name_file_and_field(hf, needle):
    with pytest.raises(Gemma3ConfigError) as err:
        Gemma3Config.from_hf(hf, source="/models/x/config.json")
    msg = str(err.value)
    assert msg.startswith("/models/x/config.json") and needle in msg and "\n" not in msg


def test_from_dict_rejects_unknown_and_missing_keys():
    values = Gemma3Config.preset("1b").to_dict()
    with pytest.raises(Gemma3ConfigError, match=r"unknown keys \['hidden'\]"):
        Gemma3Config.from_dict({**values, "hidden": 3})
    del values["vocab_size"]
    with pytest.raises(Gemma3ConfigError, match=r"missing keys \['vocab_size'\]"):
        Gemma3Config.from_dict(values)


def test_unknown_preset():
    with pytest.raises(Gemma3ConfigError, match="preset '2b' is unknown"):
        Gemma3Config.preset("2b")


def test_config_module_does_not_import_torch():
    code = "import sys, gemma3_runtime.model.config as c; c.Gemma3Config.preset('1b'); print('torch' in sys.modules)"
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(repo / "runtime")},
    )
    assert out.stdout.strip() == "False"

"""Test-only helpers for the model tests: tiny Gemma 3 configs and a private HF -> megatron weight copy.

The product's weight mapping lives in gemma3_runtime.bridge; this copy exists so the model's numerics can be tested
on random weights independently of the bridge (a bug in one must not hide a bug in the other).
"""

from __future__ import annotations

import torch

from gemma3_runtime.model.config import FULL, SLIDING, Gemma3Config


def tiny_config(
    num_layers: int = 6,
    window: int = 8,
    heads: int = 4,
    kv_heads: int = 1,
    vocab: int = 500,
    scaling: float = 1.0,
    layer_types=None,
    hidden: int = 64,
) -> Gemma3Config:
    """A small random-weight Gemma 3 (two global layers by default: 2 and 5)."""
    if layer_types is None:
        layer_types = tuple(FULL if i % 3 == 2 else SLIDING for i in range(num_layers))
    return Gemma3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=96,
        num_layers=num_layers,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=32,
        query_pre_attn_scalar=24,
        sliding_window=window,
        layer_types=tuple(layer_types),
        max_position_embeddings=1024,
        rope_global_scaling_factor=scaling,
    )


def hf_model(cfg: Gemma3Config, seed: int = 0, dtype=torch.float32):
    """transformers' Gemma3ForCausalLM (eager attention) with random weights, norms included (not zeros)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    hf_cfg = Gemma3TextConfig(**{k: v for k, v in cfg.to_hf().items() if k not in ("architectures", "model_type")})
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.normal_(0.0, 0.3)
    return model.to(dtype)


def copy_hf_into_megatron(hf, model, cfg: Gemma3Config) -> None:
    """Private TP=1/PP=1 copy of HF weights into our megatron names (see docs/CONTRACTS.md)."""
    sd = hf.state_dict()
    d, n = cfg.head_dim, cfg.num_attention_heads // cfg.num_kv_heads
    ours = dict(model.named_parameters())
    with torch.no_grad():
        emb = ours["embedding.word_embeddings.weight"]
        emb.zero_()
        emb[: cfg.vocab_size] = sd["model.embed_tokens.weight"]
        ours["decoder.final_layernorm.weight"].copy_(sd["model.norm.weight"])
        for i in range(cfg.num_layers):
            h, m = f"model.layers.{i}.", f"decoder.layers.{i}."
            q = sd[h + "self_attn.q_proj.weight"].view(cfg.num_kv_heads, n * d, -1)
            k = sd[h + "self_attn.k_proj.weight"].view(cfg.num_kv_heads, d, -1)
            v = sd[h + "self_attn.v_proj.weight"].view(cfg.num_kv_heads, d, -1)
            ours[m + "self_attention.linear_qkv.weight"].copy_(torch.cat([q, k, v], 1).reshape(-1, cfg.hidden_size))
            pairs = {
                "input_layernorm.weight": "input_layernorm.weight",
                "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
                "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
                "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
                "self_attention.linear_proj.post_layernorm.weight": "post_attention_layernorm.weight",
                "pre_mlp_layernorm.weight": "pre_feedforward_layernorm.weight",
                "mlp.linear_fc2.weight": "mlp.down_proj.weight",
                "mlp.linear_fc2.post_layernorm.weight": "post_feedforward_layernorm.weight",
            }
            for ours_name, hf_name in pairs.items():
                ours[m + ours_name].copy_(sd[h + hf_name])
            fc1 = torch.cat([sd[h + "mlp.gate_proj.weight"], sd[h + "mlp.up_proj.weight"]], 0)
            ours[m + "mlp.linear_fc1.weight"].copy_(fc1)


def build_model(cfg: Gemma3Config, **provider_fields):
    """A TP=1/PP=1 CPU model in eval mode (the process group is created once and reused)."""
    from gemma3_runtime.model.provider import Gemma3ModelProvider

    provider = Gemma3ModelProvider.from_config(cfg, device="cpu", **provider_fields)
    return provider.provide_distributed_model(wrap_with_ddp=False)[0].eval()


def build_model_with_random_norms(cfg: Gemma3Config, seed: int, std: float = 0.3):
    """`build_model` with its norm weights random too (fresh ones are zeros - (1+w) - and would hide layout bugs)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, std)
    return model

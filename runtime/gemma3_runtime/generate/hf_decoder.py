"""`Decoder` over a transformers `Gemma3ForCausalLM`: our engine (static cache, CUDA graph) driving HF's weights.

It exists so the engine can be checked against HF's own `generate` independently of the Megatron model, and so
the bench can separate "our decode loop" from "our model" when one of them regresses.
"""

from __future__ import annotations

from typing import Any

import torch

from gemma3_runtime.generate.decoder import DecoderInfo


class HFGemma3Decoder:
    def __init__(self, model: Any) -> None:
        self.model = model
        text = model.model
        config = model.config
        self.layers = text.layers
        self.types = [layer.self_attn.layer_type for layer in self.layers]
        param = next(model.parameters())
        self.info = DecoderInfo(
            sliding=tuple(t == "sliding_attention" for t in self.types),
            window=int(config.sliding_window),
            num_heads=int(config.num_attention_heads),
            num_kv_heads=int(config.num_key_value_heads),
            head_dim=int(config.head_dim),
            softmax_scale=float(config.query_pre_attn_scalar) ** -0.5,
            vocab_size=int(config.vocab_size),
            max_positions=int(config.max_position_embeddings),
            dtype=param.dtype,
            device=param.device,
        )

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.model.embed_tokens(input_ids)

    def rotary(self, positions: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        dummy = torch.empty(0, dtype=self.info.dtype, device=positions.device)
        rope = self.model.model.rotary_emb
        return {t: rope(dummy, positions, t) for t in set(self.types)}

    def qkv(self, layer: int, hidden: torch.Tensor, rotary: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        block = self.layers[layer]
        attn = block.self_attn
        x = block.input_layernorm(hidden)
        b, s, _ = x.shape
        d = self.info.head_dim
        q = attn.q_norm(attn.q_proj(x).view(b, s, -1, d).transpose(1, 2))
        k = attn.k_norm(attn.k_proj(x).view(b, s, -1, d).transpose(1, 2))
        v = attn.v_proj(x).view(b, s, -1, d).transpose(1, 2)
        cos, sin = rotary[self.types[layer]]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v

    def finish_layer(self, layer: int, hidden: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        block = self.layers[layer]
        b, _, s, _ = attention.shape
        out = block.self_attn.o_proj(attention.transpose(1, 2).reshape(b, s, -1))
        hidden = hidden + block.post_attention_layernorm(out)
        mlp = block.mlp(block.pre_feedforward_layernorm(hidden))
        return hidden + block.post_feedforward_layernorm(mlp)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        last = self.model.model.norm(hidden[:, -1])
        return self.model.lm_head(last)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.size(-1) // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin

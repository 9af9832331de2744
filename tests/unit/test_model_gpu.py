"""GPU tier (run on the lent GPU machine, never in CI): the same model on CUDA - kernels agree (flex compiled,
sdpa flash / masked paths), CUDA matches transformers, bf16 long sequence past the window runs."""

from __future__ import annotations

import pytest
import torch

from model_helpers import copy_hf_into_megatron, hf_model, tiny_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _cuda_model(cfg, **fields):
    from gemma3_runtime.model import Gemma3ModelProvider

    provider = Gemma3ModelProvider.from_config(cfg, device="cuda", **fields)
    return provider.finalize().provide_distributed_model()[0].eval()


def test_cuda_matches_transformers_fp32():
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = tiny_config()
    hf = hf_model(cfg).cuda()
    ids = torch.randint(0, cfg.vocab_size, (2, 40), device="cuda")
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        for kernel in ("eager", "sdpa", "flex", "auto"):
            model = _cuda_model(cfg, attention_kernel=kernel)
            copy_hf_into_megatron(hf, model, cfg)
            assert (model(input_ids=ids) - ref).abs().max() <= 1e-4, kernel


def test_kernels_agree_bf16_long_sequence():
    cfg = tiny_config(window=512, heads=8, kv_heads=2)
    ids = torch.randint(0, cfg.vocab_size, (1, 2048), device="cuda")
    outs = {}
    state = None
    for kernel in ("eager", "sdpa", "flex", "auto"):
        model = _cuda_model(cfg, attention_kernel=kernel, params_dtype=torch.bfloat16)
        if state is None:
            state = model.state_dict()
        model.load_state_dict(state)
        with torch.no_grad():
            outs[kernel] = model(input_ids=ids).float()
    # Random tiny weights give near-tied logits (median top-2 margin ~0.035, measured), so bf16 rounding flips some
    # argmaxes (98.5% agreement between eager and sdpa on CPU too): compare values, and argmax only where the
    # reference's top-2 margin is clear of bf16 noise.
    ref = outs["eager"]
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 0.05
    for kernel in ("sdpa", "flex", "auto"):
        diff = (outs[kernel] - ref).abs().max().item()
        agree = (outs[kernel].argmax(-1) == ref.argmax(-1))[clear].float().mean().item()
        print(f"{kernel}: max |diff| vs eager {diff:.4f}, argmax agreement where margin > 0.05: {agree:.4f}")
        assert diff <= 0.05, (kernel, diff)
        assert agree >= 0.995, (kernel, agree)

"""Provider API (the seed snippet), parameter names of docs/CONTRACTS.md, the padded vocabulary and the loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import build_model, tiny_config

from gemma3_runtime.model import Gemma3ModelProvider

pytestmark = pytest.mark.unit


def _contract_names(num_layers: int) -> set[str]:
    per_layer = [
        "input_layernorm.weight",
        "self_attention.linear_qkv.weight",
        "self_attention.q_layernorm.weight",
        "self_attention.k_layernorm.weight",
        "self_attention.linear_proj.weight",
        "self_attention.linear_proj.post_layernorm.weight",
        "pre_mlp_layernorm.weight",
        "mlp.linear_fc1.weight",
        "mlp.linear_fc2.weight",
        "mlp.linear_fc2.post_layernorm.weight",
    ]
    names = {"embedding.word_embeddings.weight", "decoder.final_layernorm.weight"}
    names |= {f"decoder.layers.{i}.{p}" for i in range(num_layers) for p in per_layer}
    return names


def test_seed_snippet_and_contract_parameter_names():
    cfg = tiny_config(vocab=500)
    provider = Gemma3ModelProvider.from_config(cfg, device="cpu")
    provider.tensor_model_parallel_size = 1
    provider.pipeline_model_parallel_size = 1
    provider.finalize()
    models = provider.provide_distributed_model(wrap_with_ddp=False)
    assert isinstance(models, list) and len(models) == 1
    params = dict(models[0].named_parameters())
    assert set(params) == _contract_names(cfg.num_layers)
    d, h, g, D, F_ = cfg.head_dim, cfg.num_attention_heads, cfg.num_kv_heads, cfg.hidden_size, cfg.intermediate_size
    assert params["embedding.word_embeddings.weight"].shape == (512, D)  # 500 padded to a multiple of 128
    assert params["decoder.layers.0.self_attention.linear_qkv.weight"].shape == ((h + 2 * g) * d, D)
    assert params["decoder.layers.0.self_attention.linear_proj.weight"].shape == (D, h * d)
    assert params["decoder.layers.0.mlp.linear_fc1.weight"].shape == (2 * F_, D)
    assert params["decoder.layers.0.self_attention.q_layernorm.weight"].shape == (d,)
    assert torch.count_nonzero(params["embedding.word_embeddings.weight"][500:]) == 0  # padded rows are zero
    assert torch.count_nonzero(params["decoder.final_layernorm.weight"]) == 0  # (1+w) norms start at w = 0


def test_pre_wrap_hook_runs_on_the_built_models():
    seen = []
    provider = Gemma3ModelProvider.from_config(tiny_config(), device="cpu")
    provider.register_pre_wrap_hook(lambda models: seen.append(len(models)))
    provider.finalize().provide_distributed_model()
    assert seen == [1]


def test_transformer_config_and_provide_for_a_middle_stage():
    provider = Gemma3ModelProvider.from_config(tiny_config(), device="cpu", attention_kernel="eager").finalize()
    tc = provider.transformer_config()
    assert tc.softmax_scale == 24**-0.5 and tc.kv_channels == 32 and tc.num_query_groups == 1
    assert tc.gemma3_attention_kernel == "eager" and tc.gemma3_sliding_window == 8
    body = provider.provide(pre_process=False, post_process=False)
    assert not hasattr(body, "output_layer") and not hasattr(body, "embedding")
    hidden = torch.randn(7, 2, 64)
    body.set_input_tensor(hidden)
    assert body(input_ids=None, position_ids=torch.arange(7).expand(2, 7)).shape == (7, 2, 64)


@pytest.mark.parametrize(
    "fields,needle",
    [
        (dict(tensor_model_parallel_size=3), "must divide num_attention_heads"),
        (dict(pipeline_model_parallel_size=7), "exceeds num_layers=6"),
        (dict(attention_kernel="flash"), "attention_kernel='flash'"),
        (dict(sequence_parallel=True), "sequence_parallel needs tensor_model_parallel_size > 1"),
        (dict(context_parallel_size=0), "context_parallel_size=0: expected >= 1"),
        (dict(context_parallel_size=2, pipeline_model_parallel_size=2), "with pipeline_model_parallel_size=2: not"),
    ],
)
def test_finalize_rejects_bad_layouts(fields, needle):
    with pytest.raises(ValueError, match=needle):
        Gemma3ModelProvider.from_config(tiny_config(), device="cpu", **fields).finalize()


def test_loss_is_fp32_per_token_and_never_sees_padded_vocab():
    cfg = tiny_config(vocab=500)
    model = build_model(cfg, params_dtype=torch.bfloat16)
    with torch.no_grad():  # make padded rows large: a loss that includes them would change a lot
        model.embedding.word_embeddings.weight[500:] = 5.0
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = torch.roll(ids, -1, 1)
    labels[1, -3:] = -100
    logits = model(input_ids=ids)
    assert logits.shape == (2, 12, 500) and logits.dtype == torch.bfloat16
    loss = model(input_ids=ids, labels=labels)
    assert loss.shape == (2, 12) and loss.dtype == torch.float32
    expected = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none", ignore_index=-100)
    assert torch.allclose(loss.flatten(), expected, atol=1e-5)
    assert torch.all(loss[1, -3:] == 0)
    loss.sum().backward()
    assert model.embedding.word_embeddings.weight.grad is not None


@pytest.mark.parametrize(
    "recompute",
    [
        dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1),
        dict(recompute_granularity="selective"),
    ],
)
@pytest.mark.parametrize("batch_first", [False, True])
def test_activation_recompute_gives_the_same_gradients(recompute, batch_first):
    """Also through the training fast path (fused loss + batch-major decoder), whose attention context and
    transposed RoPE angles must survive megatron's checkpointing."""
    cfg = tiny_config()
    from gemma3_runtime.perf.apply import fill_model_hooks
    from gemma3_runtime.perf.config import PerfConfig

    fast = {"transformer_overrides": {"gemma3_batch_first": True}} if batch_first else {}
    torch.manual_seed(0)
    plain = build_model(cfg, **fast).train()
    again = build_model(cfg, **recompute, **fast).train()
    again.load_state_dict(plain.state_dict())
    if batch_first:  # the fused loss hook, as the speed layer fills it for training
        fill_model_hooks([plain, again], PerfConfig())
    ids = torch.randint(0, 500, (2, 20), generator=torch.Generator().manual_seed(1))
    assert again._batch_first(ids, None, ids, ctx_needed=False) is batch_first
    for model in (plain, again):
        model(input_ids=ids, labels=torch.roll(ids, -1, 1)).mean().backward()
    for (name, p), q in zip(plain.named_parameters(), again.parameters(), strict=False):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name

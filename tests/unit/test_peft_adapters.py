"""LoRA / DoRA adapters on megatron-core's tensor-parallel linears (TP=1, one gloo process): the math, the merge,
the post-norm placement, freezing, and agreement with HF PEFT's LoRA / DoRA on a plain linear."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.unit

from gemma3_runtime.errors import UserInputError  # noqa: E402
from gemma3_runtime.peft.config import PeftConfig  # noqa: E402

D_IN, D_OUT = 24, 40


@pytest.fixture(scope="module")
def tp1():
    """A 1-process gloo group + megatron parallel state (what megatron's linears need), via the platform module."""
    from gemma3_runtime import platform

    platform.init_distributed("cpu", 1, 1)


def _mcore_config():
    from megatron.core.transformer import TransformerConfig

    return TransformerConfig(
        num_layers=1, hidden_size=D_IN, num_attention_heads=2, use_cpu_initialization=True, layernorm_epsilon=1e-6
    )


class Block(nn.Module):
    """A column-parallel and a post-normed row-parallel linear under the contract's names."""

    def __init__(self) -> None:
        super().__init__()
        from megatron.core.tensor_parallel import ColumnParallelLinear

        from gemma3_runtime.model.layers import PostNormRowParallelLinear

        cfg = _mcore_config()
        init = nn.init.xavier_normal_
        self.linear_fc1 = ColumnParallelLinear(D_IN, D_OUT, config=cfg, init_method=init, bias=False)
        self.linear_fc2 = PostNormRowParallelLinear(
            D_OUT, D_IN, config=cfg, init_method=init, bias=False, input_is_parallel=True, skip_bias_add=True
        )
        with torch.no_grad():
            self.linear_fc2.post_layernorm.weight.normal_(0, 0.5)

    def forward(self, x):
        h, _ = self.linear_fc1(x)
        return self.linear_fc2(torch.tanh(h))[0]


def _randomise_adapters(model: nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Non-trivial adapters (B != 0, magnitude != ||W0||), as after training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapter." in name:
                p.add_(torch.randn(p.shape, generator=gen) * scale)


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(7, 3, D_IN, generator=torch.Generator().manual_seed(seed))


# --- config ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"rank": 0}, "peft.rank"),
        ({"rank": -4}, "peft.rank"),
        ({"targets": ["linear_q"]}, "peft.targets"),
        ({"kind": "ia3"}, "peft.kind"),
        ({"alpha": 0}, "peft.alpha"),
        ({"dropout": 1.0}, "peft.dropout"),
        ({"init": "normal"}, "peft.init"),
        ({"targets": []}, "peft.targets"),
    ],
)
def test_config_rejects_bad_input_with_one_line_naming_the_field(kwargs, field):
    with pytest.raises(UserInputError) as err:
        PeftConfig(**kwargs)
    message = str(err.value)
    assert message.startswith(field) and "\n" not in message


def test_config_round_trips_and_revalidates_on_replace():
    import dataclasses

    cfg = PeftConfig.for_scheme("dora", rank=4)
    assert PeftConfig.from_dict(cfg.to_dict()) == cfg and cfg.scale == 4.0
    with pytest.raises(UserInputError, match="peft.rank"):
        dataclasses.replace(cfg, rank=0)
    with pytest.raises(UserInputError, match="peft.ranks: unknown field"):
        PeftConfig.from_dict({"ranks": 3})


# --- adapters ---------------------------------------------------------------------------------------------------------


def test_fresh_adapters_are_the_identity_and_only_adapters_train(tp1):
    from gemma3_runtime.peft import apply_peft, trainable_parameters

    for kind in ("lora", "dora"):
        torch.manual_seed(0)
        model = Block()
        ref = model(_x()).detach()
        names = apply_peft(model, PeftConfig(kind=kind, targets=["linear_fc1", "linear_fc2"], rank=4))
        assert names == ["linear_fc1", "linear_fc2"]
        assert torch.equal(model(_x()), ref)
        trainable = {n for n, _ in trainable_parameters(model)}
        expected = {
            "linear_fc1.adapter.linear_in.weight",
            "linear_fc1.adapter.linear_out.weight",
            "linear_fc2.adapter.linear_in.weight",
            "linear_fc2.adapter.linear_out.weight",
        }
        if kind == "dora":
            expected |= {"linear_fc1.adapter.weight_magnitude", "linear_fc2.adapter.weight_magnitude"}
        assert trainable == expected


def test_lora_update_is_scaled_low_rank_product_before_the_post_norm(tp1):
    from gemma3_runtime.peft import apply_peft

    torch.manual_seed(0)
    model = Block()
    apply_peft(model, PeftConfig(kind="lora", targets=["linear_fc2"], rank=3, alpha=12))
    _randomise_adapters(model)
    fc2 = model.linear_fc2
    x = torch.randn(5, 2, D_OUT)
    a, b = fc2.adapter.linear_in.weight, fc2.adapter.linear_out.weight
    expected = fc2.post_layernorm(x @ fc2.weight.T + 4.0 * (x @ a.T) @ b.T)
    torch.testing.assert_close(fc2(x)[0], expected, rtol=1e-5, atol=1e-5)


def test_fused_lora_add_is_the_unfused_function_with_the_same_gradients(tp1, monkeypatch):
    """LowRankAdapter's one-addmm form (the speed path) against `base + s * B A x` written out: outputs and the
    gradients of x, A and B agree."""
    from gemma3_runtime.peft import apply_peft
    from gemma3_runtime.peft.adapter import LowRankAdapter

    def written_out(adapter, x, base_out, base_weight):
        return base_out + adapter.low_rank_update(x)

    results = {}
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(LowRankAdapter, "forward", written_out)
        torch.manual_seed(0)
        model = Block()
        apply_peft(model, PeftConfig(kind="lora", rank=3, alpha=12))
        _randomise_adapters(model)
        x = _x().requires_grad_(True)
        out = model(x)
        out.pow(2).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[fused] = (out.detach(), x.grad.clone(), grads)
    (out_f, gx_f, g_f), (out_u, gx_u, g_u) = results[True], results[False]
    torch.testing.assert_close(out_f, out_u, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_f, gx_u, rtol=1e-5, atol=1e-5)
    assert sorted(g_f) == sorted(g_u) and any(".adapter." in n for n in g_f)
    for name in g_f:
        torch.testing.assert_close(g_f[name], g_u[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_merge_is_exact_and_restores_plain_linears(tp1, kind):
    from megatron.core.tensor_parallel import ColumnParallelLinear

    from gemma3_runtime.model.layers import PostNormRowParallelLinear
    from gemma3_runtime.peft import apply_peft, merge_peft

    torch.manual_seed(0)
    model = Block()
    apply_peft(model, PeftConfig(kind=kind, targets=["linear_fc1", "linear_fc2"], rank=4))
    _randomise_adapters(model)
    x = _x()
    with torch.no_grad():
        adapted = model(x)
        assert merge_peft(model) == ["linear_fc1", "linear_fc2"]
        merged = model(x)
    assert type(model.linear_fc1) is ColumnParallelLinear and type(model.linear_fc2) is PostNormRowParallelLinear
    assert not any(".adapter." in n for n, _ in model.named_parameters())
    diff = (adapted - merged).abs().max().item()
    assert diff < 1e-5, diff
    assert (adapted - Block.__call__(model, x)).abs().max() < 1e-5


def test_update_after_the_post_norm_cannot_be_merged(tp1):
    """The anchor's placement (negative control): merging its adapter changes the function."""
    from gemma3_runtime.peft import apply_peft, merge_peft

    torch.manual_seed(0)
    model = Block()
    apply_peft(model, PeftConfig(kind="lora", targets=["linear_fc2"], rank=4), update_position="post_norm")
    _randomise_adapters(model)
    with torch.no_grad():
        adapted = model(_x())
        merge_peft(model)
        merged = model(_x())
    assert (adapted - merged).abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_same_function_as_hf_peft_on_a_plain_linear(tp1, kind):
    """Our column-parallel adapter vs HF PEFT's LoRA / DoRA layer on the same W0, A, B, m (eval mode)."""
    import peft

    from gemma3_runtime.peft import apply_peft

    torch.manual_seed(0)
    model = Block()
    apply_peft(model, PeftConfig(kind=kind, targets=["linear_fc1"], rank=4, alpha=8))
    _randomise_adapters(model)
    fc1 = model.linear_fc1

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(D_IN, D_OUT, bias=False)

        def forward(self, x):
            return self.proj(x)

    plain = Plain()
    plain.proj.weight.data.copy_(fc1.weight.data)
    hf = peft.get_peft_model(
        plain, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["proj"], use_dora=kind == "dora")
    )
    layer = hf.base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(fc1.adapter.linear_in.weight)
        layer.lora_B["default"].weight.copy_(fc1.adapter.linear_out.weight)
        if kind == "dora":
            layer.lora_magnitude_vector["default"].weight.copy_(fc1.adapter.weight_magnitude)
    hf.eval()
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(fc1(x)[0], hf(x), rtol=1e-5, atol=1e-5)


def test_a_few_optimizer_steps_move_adapters_only(tp1):
    from gemma3_runtime.peft import apply_peft, trainable_parameters

    torch.manual_seed(0)
    model = Block()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_peft(model, PeftConfig(kind="dora", targets=["linear_fc1", "linear_fc2"], rank=4))
    opt = torch.optim.AdamW([p for _, p in trainable_parameters(model)], lr=1e-2)
    target = torch.randn(7, 3, D_IN)
    losses = []
    for _ in range(5):
        loss = (model(_x()) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for n, p in model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n
    assert model.linear_fc1.adapter.linear_out.weight.abs().sum() > 0


def test_adapter_state_dict_round_trip_and_mismatch_is_one_clear_line(tp1):
    from gemma3_runtime.peft import adapter_state_dict, apply_peft, load_adapter_state_dict

    torch.manual_seed(0)
    src = Block()
    apply_peft(src, PeftConfig(kind="dora", rank=4, targets=["linear_fc1", "linear_fc2"]))
    _randomise_adapters(src)
    state = adapter_state_dict(src)
    assert all(".adapter." in k for k in state) and len(state) == 6

    torch.manual_seed(0)
    dst = Block()
    apply_peft(dst, PeftConfig(kind="dora", rank=4, targets=["linear_fc1", "linear_fc2"]))
    load_adapter_state_dict(dst, state)
    x = _x()
    assert torch.equal(src(x), dst(x))

    other = Block()
    apply_peft(other, PeftConfig(kind="lora", rank=4, targets=["linear_fc1", "linear_fc2"]))
    with pytest.raises(UserInputError, match="unexpected linear_fc1.adapter.weight_magnitude"):
        load_adapter_state_dict(other, state)


def test_sharded_state_dict_marks_adapters_like_their_base_weight(tp1):
    from gemma3_runtime.peft import apply_peft
    from gemma3_runtime.peft.state import adapter_sharded_state_dict

    torch.manual_seed(0)
    model = Block()
    apply_peft(model, PeftConfig(kind="dora", rank=4, targets=["linear_fc1", "linear_fc2"]))
    from megatron.core import parallel_state

    meta = {"dp_cp_group": parallel_state.get_data_parallel_group(with_context_parallel=True)}
    sharded = adapter_sharded_state_dict(model.linear_fc1, prefix="linear_fc1.", metadata=meta)
    sharded.update(adapter_sharded_state_dict(model.linear_fc2, prefix="linear_fc2.", metadata=meta))
    assert set(sharded) == {
        "linear_fc1.adapter.linear_in.weight",
        "linear_fc1.adapter.linear_out.weight",
        "linear_fc1.adapter.weight_magnitude",
        "linear_fc2.adapter.linear_in.weight",
        "linear_fc2.adapter.linear_out.weight",
        "linear_fc2.adapter.weight_magnitude",
    }
    # the global shapes are the unsharded ones; sharded axes are recorded as the TP axis
    assert sharded["linear_fc1.adapter.linear_out.weight"].global_shape == (D_OUT, 4)
    assert sharded["linear_fc2.adapter.linear_in.weight"].global_shape == (4, D_OUT)


def test_unknown_or_missing_targets_are_refused(tp1):
    from gemma3_runtime.peft import apply_peft

    model = Block()
    with pytest.raises(UserInputError, match="peft.targets: no module named linear_qkv"):
        apply_peft(model, PeftConfig(targets=["linear_qkv"]))

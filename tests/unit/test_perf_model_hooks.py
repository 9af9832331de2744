"""The model's named hooks, filled by the speed layer, compute the same function as its plain path: attention kernel
"auto" with `plain_attention` and the `fused_loss` (chunked linear + CE) give the plain model's per-token loss, logits
and gradients (tiny random model, CPU, fp32), and the in-place layer compile (dynamo + AOT autograd, eager backend on
CPU) changes nothing and breaks no graph."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model_helpers import tiny_config  # noqa: E402

pytestmark = pytest.mark.unit


def _build(kernel: str, fused_ce: bool, vocab: int = 500, batch_first: bool = False):
    from gemma3_runtime.model.provider import Gemma3ModelProvider
    from gemma3_runtime.perf.apply import fill_model_hooks
    from gemma3_runtime.perf.config import PerfConfig

    cfg = tiny_config(vocab=vocab)
    prov = Gemma3ModelProvider.from_config(
        cfg,
        device="cpu",
        attention_kernel=kernel,
        seed=7,
        transformer_overrides={"gemma3_batch_first": batch_first},
    )
    torch.manual_seed(7)
    model = prov.provide_distributed_model()[0]
    filled = fill_model_hooks([model], PerfConfig(fused_linear_ce=fused_ce))
    assert filled == {"plain_attention": 6 if kernel == "auto" else 0, "fused_loss": int(fused_ce)}
    return model


def _loss_and_grads(model, ids, labels):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, position_ids=torch.arange(ids.shape[1]).expand_as(ids), labels=labels)
    mask = (labels >= 0).float()
    (loss * mask).sum().div(mask.sum()).backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def test_auto_attention_and_fused_ce_equal_the_plain_model() -> None:
    plain = _build("sdpa", False)
    fast = _build("auto", True)
    fast.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 500, (2, 40), generator=g)  # 40 > window 8: sliding layers really slide
    labels = torch.randint(0, 500, (2, 40), generator=g)
    labels[0, :5] = -100
    loss_p, grads_p = _loss_and_grads(plain, ids, labels)
    loss_f, grads_f = _loss_and_grads(fast, ids, labels)
    assert loss_f.shape == loss_p.shape == (2, 40)
    assert _rel(loss_f, loss_p) < 1e-5
    assert torch.all(loss_f[0, :5] == 0)
    assert grads_f.keys() == grads_p.keys()
    for name in grads_p:
        assert _rel(grads_f[name], grads_p[name]) < 1e-4, name
    with torch.no_grad():
        pos = torch.arange(40).expand_as(ids)
        assert _rel(fast(input_ids=ids, position_ids=pos), plain(input_ids=ids, position_ids=pos)) < 1e-5


@pytest.mark.parametrize("kernel", ["auto", "sdpa", "eager"])
def test_batch_first_training_forward_is_the_same_function(kernel: str) -> None:
    """The batch-major decoder (perf.batch_first) gives the [s, b] model's per-token loss and gradients, on the fast
    attention path and on the general kernels; with packing (segment_ids) it falls back to [s, b] by itself."""
    ref = _build(kernel, True)
    fast = _build(kernel, True, batch_first=True)
    fast.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 500, (3, 40), generator=g)
    labels = torch.randint(0, 500, (3, 40), generator=g)
    labels[1, :7] = -100
    assert fast._batch_first(ids, None, labels, ctx_needed=False)
    assert not ref._batch_first(ids, None, labels, ctx_needed=False)
    assert not fast._batch_first(ids, None, None, ctx_needed=False)  # logits / generation keep [s, b]
    assert not fast._batch_first(ids, None, labels, ctx_needed=True)  # padding, packing, KV cache
    loss_r, grads_r = _loss_and_grads(ref, ids, labels)
    loss_f, grads_f = _loss_and_grads(fast, ids, labels)
    assert loss_f.shape == loss_r.shape == (3, 40)
    assert _rel(loss_f, loss_r) < 1e-6
    assert grads_f.keys() == grads_r.keys()
    for name in grads_r:
        assert _rel(grads_f[name], grads_r[name]) < 1e-5, name
    seg = torch.cat([torch.zeros(3, 20, dtype=torch.long), torch.ones(3, 20, dtype=torch.long)], dim=1)
    pos = torch.arange(40).expand_as(ids)
    assert (
        _rel(
            fast(input_ids=ids, position_ids=pos, labels=labels, segment_ids=seg),
            ref(input_ids=ids, position_ids=pos, labels=labels, segment_ids=seg),
        )
        < 1e-6
    )


def test_layer_compile_is_the_same_function_without_graph_breaks() -> None:
    from torch._dynamo.utils import counters

    from gemma3_runtime.perf.compile import compile_model

    torch._dynamo.reset()
    counters.clear()
    model = _build("auto", True, batch_first=True)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 500, (2, 24), generator=g)
    loss_ref, grads_ref = _loss_and_grads(model, ids, ids)
    names = compile_model(model, "layers", backend="aot_eager")
    assert names == [f"decoder.layers.{i}" for i in range(6)]
    for _ in range(2):
        loss_c, grads_c = _loss_and_grads(model, ids, ids)
    assert _rel(loss_c, loss_ref) < 1e-6
    for name in grads_ref:
        assert _rel(grads_c[name], grads_ref[name]) < 1e-5, name
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] <= 2  # one sliding + one global layer graph, shared by all layers
    frames = counters["stats"]["unique_graphs"]
    model.eval()
    with torch.no_grad():  # evaluation stays eager: no new graphs
        model(input_ids=ids, position_ids=torch.arange(24).expand_as(ids), labels=ids)
    assert counters["stats"]["unique_graphs"] == frames
    assert sorted(model.state_dict()) == sorted(_build("auto", True).state_dict())
    torch._dynamo.reset()

"""Gradient-accumulation fusion (perf/grad_fusion.py) is the same function as megatron's unfused path.

On CPU the shim runs its "reference" accumulation (the same main_grad += grad_output^T @ input that the CUDA
`addmm(out_dtype=fp32)` forms do, probed on the GPU at install time); megatron's own fused backward and its
`grad_added_to_main_grad` interplay with DDP are exercised for real: main_grad after two micro-batches of
backward equals the unfused model's (bf16-grad + DDP add) main_grad, eagerly and with the layers compiled
(aot_eager) without graph breaks, the accumulation op running at every backward.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model_helpers import tiny_config  # noqa: E402

pytestmark = pytest.mark.unit


@pytest.fixture
def fusion(monkeypatch):
    """Install the shim in "reference" mode and restore megatron's module state afterwards. megatron's fused
    backward allocates its dummy weight gradient on `torch.cuda.current_device()`; on CPU that is redirected."""
    import megatron.core.tensor_parallel.layers as layers

    from gemma3_runtime import platform
    from gemma3_runtime.perf import grad_fusion

    for name in ("_grad_accum_fusion_available", "linear_with_grad_accumulation_and_async_allreduce"):
        monkeypatch.setattr(layers, name, getattr(layers, name))
    monkeypatch.setattr(
        layers, "fused_weight_gradient_mlp_cuda", getattr(layers, "fused_weight_gradient_mlp_cuda", None), raising=False
    )
    # the runtime's own CPU shims (torch.cuda.current_device -> "cpu"), entered once per process like every CPU run;
    # a monkeypatch here would be undone under the shims and break the next test's DDP buffers
    platform.init_distributed(torch.device("cpu"))
    monkeypatch.setitem(grad_fusion._SHIM, "shim", None)
    assert grad_fusion.install(torch.device("cpu"), mode="reference")
    assert grad_fusion.status()["mode"] == "reference"
    grad_fusion.reset_counters()
    return grad_fusion


def _build(fused: bool):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from gemma3_runtime.model.provider import Gemma3ModelProvider
    from gemma3_runtime.perf.apply import fill_model_hooks
    from gemma3_runtime.perf.config import PerfConfig

    prov = Gemma3ModelProvider.from_config(
        tiny_config(vocab=300),
        device="cpu",
        attention_kernel="sdpa",
        seed=7,
        transformer_overrides={"gradient_accumulation_fusion": fused},
    )
    torch.manual_seed(7)
    model = prov.provide_distributed_model(wrap_with_ddp=False)[0]
    fill_model_hooks([model], PerfConfig())  # the fused loss, as in training
    assert model.config.gradient_accumulation_fusion is fused
    ddp = DistributedDataParallel(
        config=model.config, module=model, ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True)
    )
    return ddp


def _main_grads(ddp, batches) -> dict[str, torch.Tensor]:
    ddp.zero_grad_buffer()
    for ids in batches:  # two micro-batches: the second accumulates onto the first
        loss = ddp(input_ids=ids, position_ids=torch.arange(ids.shape[1]).expand_as(ids), labels=ids)
        loss.mean().backward()
    return {n: p.main_grad.detach().clone() for n, p in ddp.module.named_parameters() if p.requires_grad}


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _batches():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 300, (2, 20), generator=g) for _ in range(2)]


def test_shim_math_matches_the_unfused_gemm() -> None:
    from gemma3_runtime.perf.grad_fusion import TorchWgradAccum

    g = torch.Generator().manual_seed(0)
    x, dy = torch.randn(40, 16, generator=g), torch.randn(40, 8, generator=g)
    acc = torch.randn(8, 16, generator=g)
    ref = acc + dy.t() @ x
    TorchWgradAccum("reference").wgrad_gemm_accum_fp32(x.bfloat16(), dy.bfloat16(), acc)
    assert _rel(acc, ref) < 2e-2  # bf16 operands
    acc16 = torch.zeros(8, 16, dtype=torch.bfloat16)
    TorchWgradAccum("reference").wgrad_gemm_accum_fp16(x.bfloat16(), dy.bfloat16(), acc16)
    assert _rel(acc16.float(), dy.t() @ x) < 2e-2


def test_fused_main_grad_equals_unfused(fusion) -> None:
    plain, fused = _build(False), _build(True)
    fused.module.load_state_dict(plain.module.state_dict())
    batches = _batches()
    ref, got = _main_grads(plain, batches), _main_grads(fused, batches)
    assert ref.keys() == got.keys()
    fused_linears = [
        n
        for n in got
        if n.endswith(("linear_qkv.weight", "linear_proj.weight", "linear_fc1.weight", "linear_fc2.weight"))
    ]
    assert fused_linears
    for name in ref:
        assert _rel(got[name], ref[name]) < 1e-5, name
    params = dict(fused.module.named_parameters())
    assert all(params[n].grad_added_to_main_grad for n in fused_linears)  # the DDP hook skipped their add
    assert all(params[n].grad is None for n in got)
    n_layers = tiny_config(vocab=300).num_layers
    assert fusion.status()["fused_calls"] == 2 * 4 * n_layers  # 2 micro-batches x 4 linears x layers
    assert fusion.status()["unfused_calls"] == 0


def test_fused_with_compiled_layers(fusion) -> None:
    from torch._dynamo.utils import counters

    from gemma3_runtime.perf.compile import compile_model

    torch._dynamo.reset()
    counters.clear()
    plain, fused = _build(False), _build(True)
    fused.module.load_state_dict(plain.module.state_dict())
    batches = _batches()
    ref = _main_grads(plain, batches)
    compile_model([fused], "layers", backend="aot_eager")
    for _ in range(2):  # twice: the second step runs the cached graphs
        got = _main_grads(fused, batches)
        for name in ref:
            assert _rel(got[name], ref[name]) < 1e-5, name
    n_layers = tiny_config(vocab=300).num_layers
    assert fusion.status()["fused_calls"] == 2 * 2 * 4 * n_layers  # the op runs at every backward, not at trace
    assert fusion.status()["unfused_calls"] == 0
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    torch._dynamo.reset()


def test_install_is_cuda_only_by_default() -> None:
    from gemma3_runtime.perf import apply
    from gemma3_runtime.perf.config import PerfConfig
    from gemma3_runtime.perf.grad_fusion import install

    assert install(torch.device("cpu")) is False
    fields = apply.provider_fields(PerfConfig(grad_accum_fusion=True), 1, torch.device("cpu"))
    assert "gradient_accumulation_fusion" not in fields["transformer_overrides"]
    assert PerfConfig.plain().grad_accum_fusion is False


def _train_losses(fused: bool, steps: int = 3) -> list[tuple[float, float]]:
    """The training loop's step (megatron schedule, DDP finalize, optimizer) for a few steps of 2 micro-batches."""
    from gemma3_runtime.training.config import OptimizerConfig
    from gemma3_runtime.training.optimizer import build_optimizer
    from gemma3_runtime.training.step import finalize_grads, run_forward_backward

    ddp = _build(fused)
    ddp.module.config.finalize_model_grads_func = finalize_grads
    ddp.module.config.no_sync_func = ddp.no_sync
    opt = build_optimizer(
        [ddp], OptimizerConfig(lr=1e-3, min_lr=1e-3, weight_decay=0.1, clip_grad=1.0), torch.device("cpu"), False
    )
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(steps):
        ddp.zero_grad_buffer()
        batches = []
        for _ in range(2):
            ids = torch.randint(0, 300, (2, 17), generator=g)
            batches.append(
                {
                    "input_ids": ids[:, :-1],
                    "labels": ids[:, 1:],
                    "loss_mask": torch.ones(2, 16),
                    "position_ids": torch.arange(16).expand(2, 16),
                }
            )
        loss_sum, count = run_forward_backward(
            [ddp], iter(batches), 2, 16, 2, torch.device("cpu"), forward_only=False
        ).tolist()
        out.append((loss_sum / count, float(opt.step(1e-3))))
    return out


def test_fused_training_steps_equal_unfused(fusion) -> None:
    """Through the schedule, DDP's finalize and the optimizer: same losses and grad norms for three steps."""
    torch.manual_seed(0)
    ref = _train_losses(False)
    got = _train_losses(True)
    for (la, na), (lb, nb) in zip(ref, got, strict=False):
        assert abs(la - lb) <= 1e-5 * abs(la) and abs(na - nb) <= 1e-5 * abs(na), (ref, got)
    assert fusion.status()["fused_calls"] == 3 * 2 * 4 * tiny_config(vocab=300).num_layers


def test_runtime_failure_falls_back_to_the_real_gradient(fusion, monkeypatch) -> None:
    """A GEMM form that fails at run time (not seen by the install probe) switches fusion off, never crashes."""
    plain, fused = _build(False), _build(True)
    fused.module.load_state_dict(plain.module.state_dict())

    def broken(*args, **kwargs):
        raise RuntimeError("out_dtype not supported for this layout")

    monkeypatch.setattr(fusion._SHIM["shim"], "wgrad_gemm_accum_fp32", broken)
    batches = _batches()
    ref, got = _main_grads(plain, batches), _main_grads(fused, batches)
    for name in ref:
        assert _rel(got[name], ref[name]) < 1e-5, name
    assert fusion.status()["fused_calls"] == 0 and fusion.status()["unfused_calls"] > 0
    assert "runtime error" in fusion.status()["reason"]

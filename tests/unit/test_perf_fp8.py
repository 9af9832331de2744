"""FP8 training (perf/fp8.py) on CPU through torchao's emulation: the same float8 casts and dynamic scales as on an
sm89+ GPU, with the scaled GEMM done in high precision.

float8 changes the numbers (e4m3 operands keep ~3 mantissa bits), so these tests bound the difference instead of
asking for equality: on the tiny model, the loss of a forward is within 0.5% relative of the bf16 path's (seen:
< 0.02%), every parameter's gradient points the same way (cosine > 0.9; seen: >= 0.948, the smallest on the q/k
norms), and three training steps stay within 1% of bf16's losses. The bound the switch is judged by (1% relative
on each of 200 steps of the 1B) is measured on the GPU (bench/gpu_session/fp8_loss.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model_helpers import tiny_config  # noqa: E402

pytestmark = pytest.mark.unit

# torchao (the `fp8` extra) is a prerequisite of this file: without it the import fails the tier, never skips it
import torchao.float8  # noqa: E402, F401

VOCAB = 300
DECODER_LINEARS = ("linear_qkv.weight", "linear_proj.weight", "linear_fc1.weight", "linear_fc2.weight")


def _build(recipe: str = "none", compile_backend: str | None = None):
    from gemma3_runtime import platform
    from gemma3_runtime.model.provider import Gemma3ModelProvider
    from gemma3_runtime.perf.apply import fill_model_hooks, use_fp8
    from gemma3_runtime.perf.config import PerfConfig

    platform.init_distributed(torch.device("cpu"))
    prov = Gemma3ModelProvider.from_config(tiny_config(vocab=VOCAB), device="cpu", attention_kernel="sdpa", seed=7)
    torch.manual_seed(7)
    model = prov.provide_distributed_model(wrap_with_ddp=False)[0]
    perf = PerfConfig(fp8=recipe)
    fill_model_hooks([model], perf)
    hooked = use_fp8([model], perf, torch.device("cpu"), emulate=True)
    if compile_backend:
        from gemma3_runtime.perf.compile import compile_model

        compile_model([model], "layers", backend=compile_backend)
    return model, hooked


def _batch():
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, VOCAB, (2, 32), generator=g)


def _loss_and_grads(model) -> tuple[float, dict[str, torch.Tensor]]:
    ids = _batch()
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, position_ids=torch.arange(ids.shape[1]).expand_as(ids), labels=ids).float().mean()
    loss.backward()
    loss = loss.detach()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss), grads


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_fp8_forward_backward_close_to_bf16(recipe: str) -> None:
    from gemma3_runtime.perf.fp8 import Fp8LinearImpl

    ref_model, none_hooked = _build("none")
    model, hooked = _build(recipe)
    model.load_state_dict(ref_model.state_dict())
    n_layers = tiny_config(vocab=VOCAB).num_layers
    assert none_hooked == 0 and hooked == 4 * n_layers
    impls = {n for n, m in model.named_modules() if isinstance(m.__dict__.get("_forward_impl"), Fp8LinearImpl)}
    assert not any("output_layer" in n or "embedding" in n for n in impls)
    ref_loss, ref_grads = _loss_and_grads(ref_model)
    loss, grads = _loss_and_grads(model)
    assert loss != ref_loss  # the float8 path really ran (it rounds the operands)
    assert abs(loss - ref_loss) <= 0.005 * abs(ref_loss), (loss, ref_loss)
    assert ref_grads.keys() == grads.keys()
    linears = [n for n in grads if n.endswith(DECODER_LINEARS)]
    assert len(linears) == 4 * n_layers
    for name in grads:
        assert torch.isfinite(grads[name]).all(), name
        assert _cosine(grads[name], ref_grads[name]) > 0.9, name


def test_fp8_under_compiled_layers_without_graph_breaks() -> None:
    from torch._dynamo.utils import counters

    from gemma3_runtime.perf.patches import MEGATRON_PATCHES

    torch._dynamo.reset()
    counters.clear()
    try:
        eager, _ = _build("tensorwise")
        compiled, hooked = _build("tensorwise", compile_backend="aot_eager")
        compiled.load_state_dict(eager.state_dict())
        ref_loss, ref_grads = _loss_and_grads(eager)
        for _ in range(2):  # the second pass runs the cached graphs
            loss, grads = _loss_and_grads(compiled)
            assert abs(loss - ref_loss) <= 1e-4 * abs(ref_loss)
            for name in ref_grads:
                assert _cosine(grads[name], ref_grads[name]) > 0.999, name
        assert hooked > 0
        assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    finally:
        MEGATRON_PATCHES.restore()  # compile_model's megatron patch, as Trainer.close does
        torch._dynamo.reset()


def _train_losses(recipe: str, steps: int = 3) -> list[float]:
    """The training loop's step (megatron schedule, DDP finalize, optimizer) for a few steps of 2 micro-batches."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from gemma3_runtime.training.config import OptimizerConfig
    from gemma3_runtime.training.optimizer import build_optimizer
    from gemma3_runtime.training.step import finalize_grads, run_forward_backward

    model, _ = _build(recipe)
    ddp = DistributedDataParallel(
        config=model.config, module=model, ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True)
    )
    ddp.module.config.finalize_model_grads_func = finalize_grads
    ddp.module.config.no_sync_func = ddp.no_sync
    opt = build_optimizer(
        [ddp], OptimizerConfig(lr=1e-3, min_lr=1e-3, weight_decay=0.1, clip_grad=1.0), torch.device("cpu"), False
    )
    g = torch.Generator().manual_seed(5)
    losses = []
    for _ in range(steps):
        ddp.zero_grad_buffer()
        batches = []
        for _ in range(2):
            ids = torch.randint(0, VOCAB, (2, 17), generator=g)
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
        opt.step(1e-3)
        losses.append(loss_sum / count)
    return losses


def test_fp8_training_steps_close_to_bf16() -> None:
    """Through the schedule, DDP's finalize (the fp8 weight gradients take the DDP add into main_grad) and the
    optimizer: every step's loss within 1% of bf16's on the same batches from the same init."""
    ref, got = _train_losses("none"), _train_losses("tensorwise")
    for a, b in zip(ref, got, strict=True):
        assert abs(a - b) <= 0.01 * abs(a), (ref, got)
    assert got != ref  # the float8 path ran


def test_fallback_cases_use_megatrons_function() -> None:
    """Anything but the plain GEMM (bias in the GEMM, dgrad all-reduce, sequence parallel, frozen weight) goes to
    the original implementation with the same arguments."""
    from gemma3_runtime.perf.fp8 import Fp8LinearImpl, torchao_config

    calls = []

    def original(**kwargs):
        calls.append(kwargs)
        return kwargs["input"] @ kwargs["weight"].t()

    impl = Fp8LinearImpl(original, torchao_config("tensorwise", emulate=True))
    x, w = torch.randn(2, 16, 32), torch.randn(48, 32, requires_grad=True)
    impl(x, w)
    assert calls == []
    impl(x, w, bias=torch.zeros(48))
    impl(x, w, allreduce_dgrad=True)
    impl(x, w, sequence_parallel=True)
    impl(x, w.detach())
    assert len(calls) == 4 and all(c["input"] is x for c in calls)


def test_switch_is_off_by_default_validated_and_cuda_only(caplog) -> None:
    from gemma3_runtime.perf.apply import use_fp8
    from gemma3_runtime.perf.config import PerfConfig
    from gemma3_runtime.perf.fp8 import fp8_unsupported
    from gemma3_runtime.training.config import ConfigContainer, apply_overrides

    assert PerfConfig().fp8 == "none" and PerfConfig.plain().fp8 == "none"
    assert "fp8" not in PerfConfig.ablations()  # off by default: no "defaults minus fp8"
    with pytest.raises(ValueError, match="perf.fp8: expected one of none, tensorwise, rowwise"):
        PerfConfig(fp8="e5m2").validate()
    cfg = apply_overrides(ConfigContainer(), ["perf.fp8=rowwise"])
    assert cfg.perf.fp8 == "rowwise"
    from gemma3_runtime.errors import UserInputError

    for bad in ("true", "off", "e4m3"):  # YAML's booleans included: the recipe must be named
        with pytest.raises(UserInputError, match="perf.fp8"):
            apply_overrides(ConfigContainer(), [f"perf.fp8={bad}"])
    assert fp8_unsupported(torch.device("cpu")) == "float8 matmuls need a CUDA device"
    model, _ = _build("none")
    with caplog.at_level("WARNING", logger="gemma3_runtime.perf"):
        assert use_fp8([model], PerfConfig(fp8="tensorwise"), torch.device("cpu")) == 0
    assert "fp8 off: float8 matmuls need a CUDA device" in caplog.text


def test_opt_ins_are_the_defaults_plus_one_switch() -> None:
    from gemma3_runtime.perf.config import PerfConfig

    default, opt_ins = PerfConfig(), PerfConfig.opt_ins()
    assert opt_ins["fp8"].fp8 == "tensorwise" and opt_ins["fp8_rowwise"].fp8 == "rowwise"
    assert {"grad_accum_fusion", "overlap_grad_reduce"} <= set(opt_ins)
    for perf in opt_ins.values():
        changed = [f for f in vars(default) if getattr(perf, f) != getattr(default, f)]
        assert len(changed) == 1, changed
        perf.validate()

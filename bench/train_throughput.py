"""Training throughput of OUR runtime (megatron-core + gemma3_runtime.perf) vs the Hugging Face anchor, one card.

Benchmark, not a test: prints numbers, never fails on speed. One invocation runs, in one process on one GPU:
  1. the HF anchor configurations (bench/hf_baseline_anchor.py, a verbatim copy of ../shared/bench/hf_baseline.py,
     sha256 below, checked against ../shared when that exists): eager, +torch.compile, +PEFT LoRA r32;
  2. our variants: the same model (Gemma 3 1B architecture, exact config, random init), the same step as
     `gemma3-runtime run` (provider -> [LoRA] -> megatron DDP -> megatron optimizer -> forward_backward schedule
     -> optimizer.step, with the perf switches applied by gemma3_runtime.perf.apply, exactly as the loop does);
  3. optionally (--parity) 20 steps of ours and HF's from the SAME initial weights (HF -> our bridge), same batches.
Prints one JSON line per measurement and a table; writes everything to --json.
FLOPs/token are counted as the anchor counts them (gemma3_runtime.training.flops); MFU is vs 989 TFLOP/s dense bf16.

Run on the GPU machine:   python3 bench/train_throughput.py --json $OUT/train_throughput.json
CPU smoke (tiny model):   python3 bench/train_throughput.py --device cpu --tiny --hf none
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for sub in ("runtime", "launcher"):
    if str(REPO / sub) not in sys.path:
        sys.path.insert(0, str(REPO / sub))

import torch  # noqa: E402

ANCHOR = HERE / "hf_baseline_anchor.py"
ANCHOR_SOURCE = REPO.parent / "shared" / "bench" / "hf_baseline.py"
ANCHOR_SHA256 = "4ce53cdb26efde49c1c570a31f5c2e14e72e983956cf5a6aca13d7235a887f4d"
PEAK_TFLOPS = 989.0

# ---- our variants -------------------------------------------------------------------------------------------------
# name -> (PerfConfig fields, extra: peft / mbs / micro-batches per step / recompute)
PLAIN = dict(attention="sdpa", fused_linear_ce=False, compile="none", fused_adam=False, overlap_grad_reduce=False)
FAST = dict(attention="auto", fused_linear_ce=True, compile="layers", fused_adam=True)
#: `fast` + the issue-8 levers (each CUDA-only and self-probing; on CPU they switch themselves off)
FAST2 = {**FAST, "grad_accum_fusion": True, "fused_geglu": True}
#: LoRA's base weights are frozen, so gradient-accumulation fusion has nothing to fuse there (the adapters are
#: nn.Linear): LoRA's fast2 is the fused GeGLU (+ micro-batches per step in its variant)
LORA_FAST2 = {**FAST, "fused_geglu": True}
#: + the hand-written Triton cross-entropy pass (perf/ce_triton.py)
FAST3 = {**FAST2, "ce_kernel": "triton"}
LORA_FAST3 = {**LORA_FAST2, "ce_kernel": "triton"}
#: + the optimizer step without a host sync (perf/optim.py sync_free_step)
FAST4 = {**FAST3, "sync_free_optimizer": True}
LORA_FAST4 = {**LORA_FAST3, "sync_free_optimizer": True}
#: + LoRA's up-projection add as one Triton kernel (perf/lora_triton.py)
LORA_FAST5 = {**LORA_FAST4, "lora_triton_add": True}


def perf_of(spec: dict[str, Any]):
    """The variant's PerfConfig. Levers a variant does not name are OFF, whatever PerfConfig's defaults are now
    (grad_accum_fusion and fused_geglu became defaults in session 3; ce_kernel "auto" = Triton and
    sync_free_optimizer in session 4; batch_first in session 5): a variant's name keeps meaning what it measured."""
    from gemma3_runtime.perf.config import PerfConfig

    if spec["perf"] is None:  # "default-*": what a user gets without setting any perf field (+ `perf_set`)
        return PerfConfig(**spec.get("perf_set", {}))
    return PerfConfig(
        **{
            "grad_accum_fusion": False,
            "fused_geglu": False,
            "ce_kernel": "compile",
            "sync_free_optimizer": False,
            "lora_triton_add": False,
            "batch_first": False,
            **spec["perf"],
        }
    )


VARIANTS: dict[str, dict[str, Any]] = {
    "plain": dict(perf=PLAIN),
    "attn-auto": dict(perf={**PLAIN, "attention": "auto"}),
    "attn-flex": dict(perf={**PLAIN, "attention": "flex"}),
    "ce": dict(perf={**PLAIN, "attention": "auto", "fused_linear_ce": True}),
    "ce-adam": dict(perf={**PLAIN, "attention": "auto", "fused_linear_ce": True, "fused_adam": True}),
    "fast-norms": dict(
        perf={**PLAIN, "attention": "auto", "fused_linear_ce": True, "fused_adam": True, "compile": "norms"}
    ),
    "fast-mlp": dict(
        perf={**PLAIN, "attention": "auto", "fused_linear_ce": True, "fused_adam": True, "compile": "mlp"}
    ),
    "fast": dict(perf=dict(attention="auto", fused_linear_ce=True, compile="layers", fused_adam=True)),
    # the fast path's attention alternatives (GEMMA3_FAST_ATTENTION): flex for global layers too / SDPA window mask
    "fast-sdpawin": dict(
        perf=dict(attention="auto", fused_linear_ce=True, compile="layers", fused_adam=True),
        env={"GEMMA3_FAST_ATTENTION": "sdpa"},
    ),
    "fast-flex": dict(
        perf=dict(attention="auto", fused_linear_ce=True, compile="layers", fused_adam=True),
        env={"GEMMA3_FAST_ATTENTION": "flex"},
    ),
    "fast-mbs4-ga4": dict(
        perf=dict(attention="auto", fused_linear_ce=True, compile="layers", fused_adam=True), mbs=4, nmb=4
    ),
    "fast-nocompile": dict(perf=dict(attention="auto", fused_linear_ce=True, compile="none", fused_adam=True)),
    "fast-mbs4": dict(perf=dict(attention="auto", fused_linear_ce=True, compile="layers", fused_adam=True), mbs=4),
    "fast-ga8": dict(perf=dict(attention="auto", fused_linear_ce=True, compile="layers", fused_adam=True), nmb=8),
    "lora-plain": dict(perf=PLAIN, peft="lora"),
    "lora-fast": dict(
        perf=dict(attention="auto", fused_linear_ce=True, compile="layers", fused_adam=True), peft="lora"
    ),
    "lora-fast-mbs4": dict(
        perf=dict(attention="auto", fused_linear_ce=True, compile="layers", fused_adam=True), peft="lora", mbs=4
    ),
    # LoRA at micro-batch 4 with 4 micro-batches per optimizer step: amortises the per-step host work (optimizer,
    # grad norm, ~364 small adapter tensors) that left the GPU idle 12% of the `lora-fast-mbs4` step
    # LoRA's `base + s B A x` as separate kernels (before peft/adapter.py's one-addmm form), to measure that lever
    "lora-fast-mbs4-ga4-addsep": dict(
        perf=dict(attention="auto", fused_linear_ce=True, compile="layers", fused_adam=True),
        peft="lora",
        mbs=4,
        nmb=4,
        fuse_lora_add=False,
    ),
    "lora-fast-mbs4-ga8": dict(
        perf=dict(attention="auto", fused_linear_ce=True, compile="layers", fused_adam=True), peft="lora", mbs=4, nmb=8
    ),
    "lora-fast-mbs4-ga4": dict(
        perf=dict(attention="auto", fused_linear_ce=True, compile="layers", fused_adam=True), peft="lora", mbs=4, nmb=4
    ),
    # one new lever at a time on top of `fast-mbs4-ga4` (issue 8), then all of them (`fast2`)
    "fast-gaf-mbs4-ga4": dict(perf={**FAST, "grad_accum_fusion": True}, mbs=4, nmb=4),
    "fast-geglu-mbs4-ga4": dict(perf={**FAST, "fused_geglu": True}, mbs=4, nmb=4),
    "fast2-mbs4-ga4": dict(perf=FAST2, mbs=4, nmb=4),
    "fast2-mbs4-ga8": dict(perf=FAST2, mbs=4, nmb=8),
    "lora-fast2-mbs4-ga4": dict(perf=LORA_FAST2, peft="lora", mbs=4, nmb=4),
    # larger micro-batches (same 65k / 131k tokens per step): fewer per-micro-batch host syncs and launches
    "fast2-mbs8-ga2": dict(perf=FAST2, mbs=8, nmb=2),
    "lora-fast2-mbs8-ga2": dict(perf=LORA_FAST2, peft="lora", mbs=8, nmb=2),
    "lora-fast2-mbs4-ga8": dict(perf=LORA_FAST2, peft="lora", mbs=4, nmb=8),
    # session 4: + the Triton cross-entropy pass
    "fast3-mbs4-ga4": dict(perf=FAST3, mbs=4, nmb=4),
    "fast3-mbs8-ga2": dict(perf=FAST3, mbs=8, nmb=2),
    "lora-fast3-mbs4-ga4": dict(perf=LORA_FAST3, peft="lora", mbs=4, nmb=4),
    "fast4-mbs4-ga4": dict(perf=FAST4, mbs=4, nmb=4),
    "fast4-mbs8-ga2": dict(perf=FAST4, mbs=8, nmb=2),
    "lora-fast4-mbs4-ga4": dict(perf=LORA_FAST4, peft="lora", mbs=4, nmb=4),
    "lora-fast4-mbs8-ga2": dict(perf=LORA_FAST4, peft="lora", mbs=8, nmb=2),
    "lora-fast5-mbs4-ga4": dict(perf=LORA_FAST5, peft="lora", mbs=4, nmb=4),
    "lora-fast5-mbs8-ga2": dict(perf=LORA_FAST5, peft="lora", mbs=8, nmb=2),
    "lora-fast5-ce2g-mbs8-ga2": dict(perf={**LORA_FAST5, "ce_chunk_mib": 2048}, peft="lora", mbs=8, nmb=2),
    "fast4-ce2g-mbs8-ga2": dict(perf={**FAST4, "ce_chunk_mib": 2048}, mbs=8, nmb=2),
    "fast4-ce4g-mbs8-ga2": dict(perf={**FAST4, "ce_chunk_mib": 4096}, mbs=8, nmb=2),
    # the shipped defaults (PerfConfig() as is), at HF's batch and at the best-known ones; + grad-accum fusion (off
    # by default) / inductor's coordinate-descent tuning of the compiled layers' Triton kernels / micro-batch 16
    "default-mbs2": dict(perf=None),
    "default-mbs8-ga2": dict(perf=None, mbs=8, nmb=2),
    "lora-default-mbs8-ga2": dict(perf=None, peft="lora", mbs=8, nmb=2),
    "lora-default-mbs4-ga4": dict(perf=None, peft="lora", mbs=4, nmb=4),
    "default-gaf-mbs8-ga2": dict(perf=None, mbs=8, nmb=2, perf_set={"grad_accum_fusion": True}),
    "default-gaf-cdt-mbs8-ga2": dict(
        perf=None, mbs=8, nmb=2, perf_set={"grad_accum_fusion": True}, inductor={"coordinate_descent_tuning": True}
    ),
    "lora-default-cdt-mbs8-ga2": dict(
        perf=None, peft="lora", mbs=8, nmb=2, inductor={"coordinate_descent_tuning": True}
    ),
    "default-gaf-tuned-mbs8-ga2": dict(
        perf=None, mbs=8, nmb=2, perf_set={"grad_accum_fusion": True, "tune_kernels": True}
    ),
    "default-gaf-mbs16": dict(perf=None, mbs=16, nmb=1, perf_set={"grad_accum_fusion": True}),
    "default-gaf-ce4g-mbs8-ga2": dict(
        perf=None, mbs=8, nmb=2, perf_set={"grad_accum_fusion": True, "ce_chunk_mib": 4096}
    ),
    # session 5: cuBLASLt for every aten GEMM; tuning + 4 GiB CE chunks together; inductor's GEMM autotuning
    # (Triton templates against cuBLAS) inside the compiled layers
    "default-gaf-lt-mbs8-ga2": dict(perf=None, mbs=8, nmb=2, perf_set={"grad_accum_fusion": True}, blas="cublaslt"),
    "default-gaf-tuned-ce4g-mbs8-ga2": dict(
        perf=None, mbs=8, nmb=2, perf_set={"grad_accum_fusion": True, "ce_chunk_mib": 4096, "tune_kernels": True}
    ),
    "default-gaf-maxat-mbs8-ga2": dict(
        perf=None,
        mbs=8,
        nmb=2,
        perf_set={"grad_accum_fusion": True},
        inductor={"max_autotune_gemm": True, "max_autotune_gemm_backends": "ATEN,TRITON"},
    ),
    # session 5: the batch-major decoder (now a default) off, to measure it; the best-known full-parameter setting
    "default-gaf-nobf-mbs8-ga2": dict(
        perf=None, mbs=8, nmb=2, perf_set={"grad_accum_fusion": True, "batch_first": False}
    ),
    "default-gaf-tuned-ce4g-mbs16": dict(
        perf=None, mbs=16, nmb=1, perf_set={"grad_accum_fusion": True, "ce_chunk_mib": 4096, "tune_kernels": True}
    ),
    "default-gaf-ce4g-mbs16": dict(
        perf=None, mbs=16, nmb=1, perf_set={"grad_accum_fusion": True, "ce_chunk_mib": 4096}
    ),
    "default-gaf-tuned-ce8g-mbs16": dict(
        perf=None, mbs=16, nmb=1, perf_set={"grad_accum_fusion": True, "tune_kernels": True, "ce_chunk_mib": 8192}
    ),
    "default-gaf-ce8g-mbs16": dict(
        perf=None, mbs=16, nmb=1, perf_set={"grad_accum_fusion": True, "ce_chunk_mib": 8192}
    ),
    # session 6: cuDNN's fused attention (sliding window + causal, perf/attention.py) became "auto"'s first choice
    # where the cuDNN frontend is installed; these pin the FlashAttention-2 window path it replaced
    "default-flash-mbs8-ga2": dict(perf=None, mbs=8, nmb=2, env={"GEMMA3_FAST_ATTENTION": "flash"}),
    "lora-default-flash-mbs8-ga2": dict(perf=None, peft="lora", mbs=8, nmb=2, env={"GEMMA3_FAST_ATTENTION": "flash"}),
    "default-cudnnsliding-mbs8-ga2": dict(perf=None, mbs=8, nmb=2, env={"GEMMA3_FAST_ATTENTION": "cudnn-sliding"}),
    "default-cudnnglobal-mbs8-ga2": dict(perf=None, mbs=8, nmb=2, env={"GEMMA3_FAST_ATTENTION": "cudnn-global"}),
    "default-gaf-ce8g-flash-mbs16": dict(
        perf=None,
        mbs=16,
        nmb=1,
        perf_set={"grad_accum_fusion": True, "ce_chunk_mib": 8192},
        env={"GEMMA3_FAST_ATTENTION": "flash"},
    ),
    # the chunked CE's shape (the default chunk became 2 GiB after session 4's calls 1-3, so in those calls every
    # variant without `ce2g` / `ce4g` ran 1 GiB chunks; today the same names run 2 GiB): 2 GiB chunks (half the fp32 weight-gradient accumulations), Triton block / warps
    "fast4-ce2g-mbs4-ga4": dict(perf={**FAST4, "ce_chunk_mib": 2048}, mbs=4, nmb=4),
    "fast4-ceb8k-mbs4-ga4": dict(perf=FAST4, mbs=4, nmb=4, env={"GEMMA3_CE_BLOCK": "8192", "GEMMA3_CE_WARPS": "16"}),
}
HF_PLANS = {  # name -> anchor bench() arguments (attn, seq, mbs, lora, compile)
    "eager": ("sdpa", None, None, False, False),
    "lora": ("sdpa", None, None, True, False),
    "compile": ("sdpa", None, None, False, True),
    "flex": ("flex_attention", None, None, False, False),
}


JSON_PATH: Path | None = None
T_START = time.time()


def log_json(record: dict, sink: list) -> None:
    """Print one record and rewrite the JSON file (so a run cut off by a time limit still leaves its results)."""
    record.setdefault("t_s", round(time.time() - T_START, 1))
    sink.append(record)
    print(json.dumps(record), flush=True)
    if JSON_PATH is not None:
        JSON_PATH.write_text(json.dumps(sink, indent=1))


def load_anchor():
    """The HF anchor module (verbatim copy); warn if it drifted from ../shared."""
    text = ANCHOR.read_bytes()
    digest = hashlib.sha256(text).hexdigest()
    if digest != ANCHOR_SHA256:
        print(f"WARNING: {ANCHOR.name} sha256 {digest} != recorded {ANCHOR_SHA256}", flush=True)
    if ANCHOR_SOURCE.is_file() and hashlib.sha256(ANCHOR_SOURCE.read_bytes()).hexdigest() != digest:
        print(f"WARNING: {ANCHOR} differs from {ANCHOR_SOURCE}: re-copy it", flush=True)
    spec = importlib.util.spec_from_file_location("hf_baseline_anchor", ANCHOR)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def model_config(tiny: bool):
    from gemma3_runtime.model.config import Gemma3Config

    if not tiny:
        return Gemma3Config.preset("1b")
    cfg = Gemma3Config.preset("1b")
    return dataclasses.replace(
        cfg,
        hidden_size=64,
        intermediate_size=128,
        num_layers=4,
        num_attention_heads=4,
        num_kv_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=16,
        vocab_size=1024,
        layer_types=cfg.layer_types[:3] + ("full_attention",),
    )


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ---- our training step (what training/loop.py does, piece for piece) ----------------------------------------------
class OurRun:
    """Builds model + DDP + optimizer like training/loop.py and runs its step; `step()` returns (loss, grad norm)."""

    def __init__(
        self,
        cfg,
        perf,
        device: torch.device,
        seq: int,
        mbs: int,
        nmb: int,
        peft: str | None,
        seed: int = 1234,
        lr: float = 1e-4,
        weight_decay: float = 0.1,
        clip_grad: float = 1.0,
        load_hf: str | None = None,
    ) -> None:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

        from gemma3_runtime.model.provider import Gemma3ModelProvider
        from gemma3_runtime.perf import apply as perf_apply
        from gemma3_runtime.training.config import OptimizerConfig
        from gemma3_runtime.training.optimizer import build_optimizer
        from gemma3_runtime.training.step import finalize_grads

        self.cfg, self.perf, self.device, self.seq, self.mbs, self.nmb = cfg, perf, device, seq, mbs, nmb
        bf16 = device.type == "cuda"
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        fields = perf_apply.provider_fields(perf, device=device)
        fields["transformer_overrides"] = {**fields["transformer_overrides"], "calculate_per_token_loss": True}
        provider = Gemma3ModelProvider.from_config(
            cfg, params_dtype=torch.bfloat16 if bf16 else torch.float32, device=device.type, seed=seed, **fields
        )
        if load_hf is not None:
            from gemma3_runtime.bridge.auto_bridge import AutoBridge

            bridge = AutoBridge.from_hf_pretrained(load_hf)
            provider.perform_initialization = False
            provider.register_pre_wrap_hook(lambda models: bridge.load_hf_weights(models) or models)
        provider.finalize()
        models = provider.provide_distributed_model(wrap_with_ddp=False)
        if peft:
            from gemma3_runtime.peft.apply import apply_peft
            from gemma3_runtime.peft.config import PeftConfig

            # the anchor's LoRA: r=32, alpha=32, every linear (q/k/v/o/gate/up/down == qkv/proj/fc1/fc2)
            apply_peft(models, PeftConfig(kind=peft, rank=32, alpha=32.0))
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            use_distributed_optimizer=device.type == "cuda",
            **perf_apply.ddp_fields(perf, torch.distributed.get_world_size()),
        )
        models = [DistributedDataParallel(config=m.config, ddp_config=ddp_config, module=m) for m in models]
        for m in models:
            m.config.finalize_model_grads_func = finalize_grads
            m.config.no_sync_func = m.no_sync
        self.compiled = perf_apply.prepare_models(models, perf, device, seq_length=seq)
        opt_cfg = OptimizerConfig(
            lr=lr,
            min_lr=lr,
            weight_decay=weight_decay,
            clip_grad=clip_grad,
            use_distributed_optimizer=device.type == "cuda",
        )
        self.optimizer = build_optimizer(models, opt_cfg, device, bf16)
        self.fused_groups = perf_apply.prepare_optimizer(self.optimizer, perf, device)
        self.models, self.lr = models, lr
        self.trainable = sum(p.numel() for m in models for p in m.parameters() if p.requires_grad)

    def batches(self, tokens: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """tokens [nmb * mbs, seq + 1] -> micro-batches; labels are the next tokens (the anchor's shift)."""
        out = []
        for i in range(self.nmb):
            chunk = tokens[i * self.mbs : (i + 1) * self.mbs].to(self.device)
            ids, labels = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
            pos = torch.arange(ids.shape[1], device=self.device).unsqueeze(0).expand_as(ids)
            out.append(
                {
                    "input_ids": ids,
                    "labels": labels,
                    "position_ids": pos,
                    "loss_mask": torch.ones_like(labels, dtype=torch.float),
                }
            )
        return out

    def step(self, batches: list[dict[str, torch.Tensor]]):
        """Launch one step; returns its PendingStep (training/pending.py): `.resolve()` waits for loss / grad norm,
        as the loop does one step later."""
        from torch.profiler import record_function

        from gemma3_runtime.training.pending import PendingStep
        from gemma3_runtime.training.step import run_forward_backward

        with record_function("step: zero_grad_buffer"):
            for m in self.models:
                m.zero_grad_buffer()
        with record_function("step: forward_backward"):
            totals = run_forward_backward(
                self.models, iter(batches), self.nmb, self.seq, self.mbs, self.device, forward_only=False
            )
        with record_function("step: optimizer"):
            norm = self.optimizer.step(self.lr)
        return PendingStep(0, self.lr, totals, norm)


def profile_step(run: OurRun, batches: list, name: str, out_dir: Path | None) -> dict:
    """One step under torch.profiler: top kernels/ops by device time, and device-busy time vs wall time (a large
    gap means the GPU waits for the CPU). The tables go to <out_dir>/profile_<name>.txt."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True, with_stack=True) as prof:
        t = time.time()
        run.step(batches)
        torch.cuda.synchronize()
        wall = time.time() - t
    avgs = prof.key_averages()
    key = "self_device_time_total" if hasattr(avgs[0], "self_device_time_total") else "self_cuda_time_total"
    busy_us = sum(
        getattr(e, key)
        for e in avgs
        if getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA")
    )
    text = avgs.table(sort_by=key, row_limit=45, max_name_column_width=70)
    text += "\n" + _copies_by_origin(prof, key)
    try:  # idle gaps and kernel families from the timeline (bench/gpu_session/trace_summary.py)
        sys.path.insert(0, str(HERE / "gpu_session"))
        from trace_summary import summarize

        trace = Path(tempfile.mkdtemp()) / "trace.json"
        prof.export_chrome_trace(str(trace))
        text = summarize(trace) + "\n" + text
    except Exception as exc:  # the table above is still worth having
        text += f"\ntrace summary failed: {exc!r}\n"
    if out_dir is not None:
        (out_dir / f"profile_{name}.txt").write_text(text)
    print(text[:9000], flush=True)
    return dict(profile_wall_s=round(wall, 4), profile_device_busy_s=round(busy_us / 1e6, 4))


def _copies_by_origin(prof, key: str, top: int = 12) -> str:
    """aten::copy_ calls grouped by input shapes and Python stack, largest device time first: where the step's
    device-to-device copies come from (they have no name of their own in the kernel table)."""
    rows = [e for e in prof.key_averages(group_by_input_shape=True, group_by_stack_n=6) if e.key == "aten::copy_"]
    rows.sort(key=lambda e: -getattr(e, key.replace("self_", "")) if hasattr(e, key.replace("self_", "")) else 0)
    lines = ["aten::copy_ by shapes and stack (device us total, calls):"]
    for e in rows[:top]:
        total = getattr(e, key.replace("self_", ""), 0)
        lines.append(f"{total:10.0f} us {e.count:5d} calls shapes={e.input_shapes}")
        lines += [f"        {frame}" for frame in (e.stack or [])[:6]]
    return "\n".join(lines) + "\n"


def measure_ours(
    name: str,
    spec: dict,
    cfg,
    device: torch.device,
    seq: int,
    mbs: int,
    steps: int,
    warmup: int,
    flops_fn: Callable,
    sink: list,
    profile: bool = False,
) -> dict | None:
    perf = perf_of(spec)
    mbs = spec.get("mbs", mbs)
    nmb = spec.get("nmb", 1)
    peft = spec.get("peft")
    from gemma3_runtime.peft import adapter as peft_adapter

    peft_adapter.fuse_lora_add = spec.get("fuse_lora_add", True)  # every variant sets it: no leak between variants
    free_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_build = time.time()
    run = None
    saved_env = {k: os.environ.get(k) for k in spec.get("env", {})}
    os.environ.update(spec.get("env", {}))
    import torch._inductor.config as inductor_config

    inductor_patch = inductor_config.patch(spec.get("inductor", {}))  # compile happens in the warm-up steps
    inductor_patch.__enter__()
    blas_before = None
    if spec.get("blas") and device.type == "cuda":  # cuBLAS vs cuBLASLt for every aten GEMM of the variant
        blas_before = torch.backends.cuda.preferred_blas_library()
        torch.backends.cuda.preferred_blas_library(spec["blas"])
    try:
        from gemma3_runtime.perf.grad_fusion import reset_counters

        reset_counters()
        run = OurRun(cfg, perf, device, seq, mbs, nmb, peft)
        g = torch.Generator().manual_seed(0)
        data = [run.batches(torch.randint(0, cfg.vocab_size, (nmb * mbs, seq + 1), generator=g)) for _ in range(2)]
        t0 = time.time()
        first = run.step(data[0]).resolve()
        for i in range(warmup - 1):
            run.step(data[(i + 1) % 2]).resolve()
        warm_s = time.time() - t0
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        t = time.time()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        previous = None
        for i in range(steps):  # as training/loop.py: a step's values are read after the next one is launched
            current = run.step(data[i % 2])
            if previous is not None:
                previous.resolve()
            previous = current
        last = previous.resolve()
        if device.type == "cuda":
            end.record()
            sync()
            dt = start.elapsed_time(end) / 1000 / steps
        else:
            dt = (time.time() - t) / steps
        tokens = mbs * nmb * seq
        tok_s = tokens / dt
        flops = flops_fn(seq, bool(peft)) * tok_s
        rec = dict(
            impl="ours",
            variant=name,
            seq=seq,
            mbs=mbs,
            micro_batches=nmb,
            peft=peft,
            perf=dataclasses.asdict(perf),
            compiled_modules=len(run.compiled),
            fused_adam_groups=run.fused_groups,
            trainable_params=run.trainable,
            step_s=round(dt, 4),
            tok_s=round(tok_s),
            tflops=round(flops / 1e12, 1),
            mfu_vs_989=round(flops / (PEAK_TFLOPS * 1e12), 3),
            peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1) if device.type == "cuda" else None,
            first_loss=round(first.loss, 5),
            first_grad_norm=round(first.grad_norm, 5),
            loss=round(last.loss, 5),
            build_s=round(t0 - t_build, 1),
            warmup_s=round(warm_s, 1),
        )
        if peft:
            rec["fuse_lora_add"] = peft_adapter.fuse_lora_add
        from gemma3_runtime.perf.grad_fusion import status as gaf_status

        rec["grad_accum_fusion"] = dict(
            active=bool(getattr(run.models[0].config, "gradient_accumulation_fusion", False)), **gaf_status()
        )
        from torch._dynamo.utils import counters

        from gemma3_runtime.perf import attention as fast_attn

        rec["fast_attention"] = dict(kernel=fast_attn.default_kernel(), cudnn=fast_attn._CUDNN_STATUS)
        rec["graph_breaks"] = sum(counters["graph_break"].values())
        rec["unique_graphs"] = counters["stats"].get("unique_graphs", 0)
        counters.clear()
        if profile and device.type == "cuda":
            rec.update(profile_step(run, data[0], name, JSON_PATH.parent if JSON_PATH else None))
    except Exception as exc:  # a failing variant is a result too; keep measuring the others
        rec = dict(impl="ours", variant=name, error=repr(exc)[:400], trace=traceback.format_exc()[-1500:])
    finally:
        inductor_patch.__exit__(None, None, None)
        if blas_before is not None:
            torch.backends.cuda.preferred_blas_library(blas_before)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    for key in ("env", "inductor", "perf_set", "blas"):
        if spec.get(key):
            rec[key] = spec[key]
    log_json(rec, sink)
    del run
    torch._dynamo.reset()
    free_memory()
    return rec


def measure_hf(anchor, name: str, seq: int, mbs: int, sink: list) -> dict | None:
    attn, _, _, lora, comp = HF_PLANS[name]
    free_memory()
    try:
        rec = anchor.bench(attn, seq, mbs, lora, compile_=comp)
        rec = dict(rec, impl="hf", variant=name)
    except Exception as exc:
        rec = dict(impl="hf", variant=name, error=repr(exc)[:400])
    log_json(rec, sink)
    torch._dynamo.reset()
    free_memory()
    return rec


# ---- attention kernels alone: correctness vs fp32 and fwd+bwd time --------------------------------------------------
def attention_bench(sink: list, s: int = 4096, b: int = 8, h: int = 4, g: int = 1, d: int = 256) -> None:
    """Each fast-path kernel on the 1B's attention shape at micro-batch 8 (bf16, the batch-major decoder's layout:
    [b, h, s, d] views of [b, s, h, d] memory), sliding (W=512) and global: relative error of the output and of
    dq/dk/dv against an fp32 reference, and the median fwd+bwd time of 10 runs."""
    from gemma3_runtime.perf.attention import fast_attention, load_cudnn_attention, reference_attention

    log_json(dict(impl="attn", cudnn_status=load_cudnn_attention(torch.device("cuda"), d, 512) or "loaded"), sink)
    gen = torch.Generator(device="cuda").manual_seed(0)

    def bshd(heads: int) -> torch.Tensor:
        return torch.randn(b, s, heads, d, device="cuda", generator=gen).to(torch.bfloat16).transpose(1, 2)

    q, k, v, do = bshd(h), bshd(g), bshd(g), bshd(h)
    scale = 256**-0.5

    def grads(fn, *inputs):
        xs = [x.detach().clone().requires_grad_(True) for x in inputs]
        out = fn(*xs)
        out.backward(do if out.dtype == do.dtype else do.to(out.dtype))
        return [out.detach()] + [x.grad for x in xs]

    for window in (512, None):
        ref = grads(
            lambda a, b_, c: reference_attention(a.float(), b_.float(), c.float(), window=window, scale=scale), q, k, v
        )
        for kernel in ("cudnn", "flash", "flex", "sdpa"):
            if kernel in ("flash", "flex") and window is None:
                continue  # global layers use SDPA is_causal in "flash", "flex" and "sdpa"
            try:
                fn = lambda a, b_, c: fast_attention(a, b_, c, window=window, scale=scale, kernel=kernel)  # noqa: E731
                got = grads(fn, q, k, v)
                errs = [
                    float((x.double() - r.double()).norm() / r.double().norm()) for x, r in zip(got, ref, strict=False)
                ]
                times = []
                for _ in range(12):
                    st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    st.record()
                    grads(fn, q, k, v)
                    en.record()
                    torch.cuda.synchronize()
                    times.append(st.elapsed_time(en))
                times = sorted(times[2:])
                rec = dict(
                    impl="attn",
                    kernel=kernel,
                    window=window,
                    shape=[b, h, g, s, d],
                    rel_err_out_dq_dk_dv=[round(e, 5) for e in errs],
                    fwd_bwd_ms=round(times[len(times) // 2], 3),
                )
            except Exception as exc:
                rec = dict(impl="attn", kernel=kernel, window=window, error=repr(exc)[:300])
            log_json(rec, sink)
        del ref
        free_memory()


# ---- parity: same initial weights, same batches, 20 steps -----------------------------------------------------------
def parity(
    anchor, cfg, device: torch.device, seq: int, mbs: int, steps: int, perf_name: str, sink: list, workdir: Path
) -> None:
    """HF Gemma3ForCausalLM (fp32 master, bf16 autocast, AdamW) vs ours (bridge-imported weights, bf16 params +
    fp32 main, megatron AdamW): per-step loss, no weight decay and no clipping on either side."""
    from transformers import Gemma3ForCausalLM

    lr = 1e-4
    torch.manual_seed(0)
    hf_cfg = anchor.gemma3_1b_config("sdpa") if not _is_tiny(cfg) else _tiny_hf_config(cfg)
    hf = Gemma3ForCausalLM(hf_cfg)
    hf_dir = workdir / "parity_hf"
    hf.save_pretrained(hf_dir)
    hf = hf.to(device)
    g = torch.Generator().manual_seed(123)
    data = [torch.randint(0, cfg.vocab_size, (mbs, seq + 1), generator=g) for _ in range(steps)]
    opt = torch.optim.AdamW(hf.parameters(), lr=lr, weight_decay=0.0, fused=device.type == "cuda")
    hf_losses = []
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    for x in data:
        x = x.to(device)
        with ctx:
            out = hf(input_ids=x[:, :-1], labels=x[:, :-1].clone())  # HF shifts inside; compare on seq tokens
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        hf_losses.append(float(out.loss))
    del hf, opt, out
    free_memory()
    spec = VARIANTS[perf_name]
    run = OurRun(
        cfg, perf_of(spec), device, seq, mbs, 1, None, lr=lr, weight_decay=0.0, clip_grad=0.0, load_hf=str(hf_dir)
    )
    ours = []
    for x in data:
        # HF's loss on input x[:, :-1] predicts x[1:seq] from x[0:seq-1]: the last position has no label
        ids = x[:, :-1]
        labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)
        b = {
            "input_ids": ids.to(device),
            "labels": labels.to(device),
            "position_ids": torch.arange(seq, device=device).unsqueeze(0).expand(mbs, seq),
            "loss_mask": (labels >= 0).float().to(device),
        }
        ours.append(run.step([b]).resolve().loss)
    rel = [abs(a - b) / abs(b) for a, b in zip(ours, hf_losses, strict=False)]
    rec = dict(
        impl="parity",
        variant=perf_name,
        seq=seq,
        mbs=mbs,
        steps=steps,
        hf_losses=[round(v, 5) for v in hf_losses],
        our_losses=[round(v, 5) for v in ours],
        max_rel_diff=round(max(rel), 5),
        within_2pct=bool(max(rel) <= 0.02),
    )
    log_json(rec, sink)
    del run
    torch._dynamo.reset()
    free_memory()


def _is_tiny(cfg) -> bool:
    return cfg.hidden_size < 512


def _tiny_hf_config(cfg):
    from transformers import Gemma3TextConfig

    hf_cfg = Gemma3TextConfig(**{k: v for k, v in cfg.to_hf().items() if k not in ("architectures", "model_type")})
    hf_cfg._attn_implementation = "sdpa"
    return hf_cfg


# ---- main -------------------------------------------------------------------------------------------------------------
def table(rows: list[dict]) -> str:
    lines = [
        f"{'impl':6s} {'variant':16s} {'mbs':>3s} {'nmb':>3s} {'tok/s':>8s} {'TFLOP/s':>8s} {'MFU':>6s} "
        f"{'peak GiB':>8s} {'loss1':>8s} {'gnorm1':>8s}"
    ]
    for r in rows:
        if r.get("impl") not in ("ours", "hf"):
            continue
        if "error" in r:
            lines.append(f"{r['impl']:6s} {r['variant']:16s} ERROR {r['error'][:90]}")
            continue
        lines.append(
            f"{r['impl']:6s} {r['variant']:16s} {r.get('mbs', ''):>3} {r.get('micro_batches', 1):>3} "
            f"{r['tok_s']:>8} {r['tflops']:>8} {r['mfu_vs_989']:>6} {str(r.get('peak_gib')):>8} "
            f"{str(r.get('first_loss', r.get('loss'))):>8.8s} {str(r.get('first_grad_norm', '')):>8.8s}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="a tiny model (CPU smoke test of the script)")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--mbs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--ours", default="plain,fast,lora-fast", help=f"comma list of {','.join(VARIANTS)} or none")
    ap.add_argument("--hf", default="eager,compile,lora", help=f"comma list of {','.join(HF_PLANS)} or none")
    ap.add_argument("--parity", default=None, help="run the 20-step loss parity with this variant of ours")
    ap.add_argument("--parity-steps", type=int, default=20)
    ap.add_argument("--json", default=None, help="write all records here")
    ap.add_argument("--attn-bench", action="store_true", help="time and check the attention kernels alone first")
    ap.add_argument("--profile", default="", help="comma list of our variants to profile for one extra step")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=1e9,
        help="start no new measurement after this many seconds (device time is scarce)",
    )
    args = ap.parse_args(argv)
    global JSON_PATH
    if args.json:
        JSON_PATH = Path(args.json)
        JSON_PATH.parent.mkdir(parents=True, exist_ok=True)

    def time_left(what: str) -> bool:
        if time.time() - T_START < args.budget_s:
            return True
        log_json(dict(impl="skipped", variant=what, reason=f"--budget-s {args.budget_s} reached"), sink)
        return False

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    seq = args.seq if not args.tiny else min(args.seq, 64)
    cfg = model_config(args.tiny)
    sink: list[dict] = []
    env = dict(
        torch=torch.__version__,
        gpu=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        python=sys.version.split()[0],
        seq=seq,
        model="tiny" if args.tiny else "gemma3-1b",
    )
    try:
        import megatron.core
        import transformers

        env.update(megatron_core=megatron.core.__version__, transformers=transformers.__version__)
    except Exception:
        pass
    anchor = load_anchor()
    if device.type == "cuda":
        env["bf16_matmul_tflops"] = round(anchor.matmul_ceiling(), 1)
    log_json(dict(impl="env", **env), sink)

    from gemma3_runtime.training.flops import flops_per_token_for

    def flops_fn(s: int, peft: bool) -> float:
        return flops_per_token_for(cfg, s, peft=peft)

    if args.attn_bench and device.type == "cuda":
        attention_bench(sink)
    if not args.tiny and args.hf != "none":
        for name in [n for n in args.hf.split(",") if n]:
            if time_left(f"hf/{name}"):
                measure_hf(anchor, name, seq, args.mbs, sink)

    def run_parity() -> None:
        workdir = Path(os.environ.get("TMPDIR", "/tmp")) / "g3_parity"
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            parity(anchor, cfg, device, seq, args.mbs, args.parity_steps, args.parity, sink, workdir)
        except Exception as exc:
            log_json(dict(impl="parity", error=repr(exc)[:400], trace=traceback.format_exc()[-1500:]), sink)

    if args.ours != "none":
        for name in [n for n in args.ours.split(",") if n]:
            if name == "@parity":  # run the parity check at this point of the list
                if args.parity and time_left(f"parity/{args.parity}"):
                    run_parity()
                args.parity = None
                continue
            if time_left(name):
                measure_ours(
                    name,
                    VARIANTS[name],
                    cfg,
                    device,
                    seq,
                    args.mbs,
                    args.steps,
                    args.warmup,
                    flops_fn,
                    sink,
                    profile=name in args.profile.split(","),
                )
    if args.parity and time_left(f"parity/{args.parity}"):
        run_parity()
    print(table(sink), flush=True)
    by = {(r["impl"], r["variant"]): r for r in sink if "tok_s" in r}
    for ours_name, hf_name in (
        ("fast", "compile"),
        ("fast", "eager"),
        ("lora-fast", "lora"),
        ("fast-ga8", "compile"),
        ("fast-mbs4-ga4", "compile"),
        ("lora-fast-mbs4", "lora"),
        ("fast-gaf-mbs4-ga4", "compile"),
        ("fast-geglu-mbs4-ga4", "compile"),
        ("fast2-mbs4-ga4", "compile"),
        ("fast2-mbs4-ga8", "compile"),
        ("lora-fast-mbs4-ga4", "lora"),
        ("lora-fast2-mbs4-ga4", "lora"),
        ("lora-fast-mbs4-ga4-addsep", "lora"),
        ("lora-fast-mbs4-ga8", "lora"),
        ("fast2-mbs8-ga2", "compile"),
        ("lora-fast2-mbs8-ga2", "lora"),
        ("lora-fast2-mbs4-ga8", "lora"),
    ):
        if ("ours", ours_name) in by and ("hf", hf_name) in by:
            o, h = by[("ours", ours_name)], by[("hf", hf_name)]
            print(
                f"ours/{ours_name} vs hf/{hf_name}: {o['tok_s'] / h['tok_s']:.2f}x tokens/s; peak memory "
                f"{o.get('peak_gib')} vs {h.get('peak_gib')} GiB",
                flush=True,
            )
    if JSON_PATH is not None:
        JSON_PATH.write_text(json.dumps(sink, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

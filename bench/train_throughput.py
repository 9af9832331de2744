"""Training throughput of the step users run - `Trainer.train_step` of gemma3_runtime - on one card, beside the
Hugging Face anchor.

Benchmark, not a test: prints numbers, never fails on speed. Our variants are generated from PerfConfig:
  defaults            PerfConfig() as shipped (what a user gets without setting any perf field)
  plain               PerfConfig.plain(): every fast path off
  minus-<switch>      the defaults with that one switch at its plain value, for every switch the defaults turn on
  plus-<switch>       the defaults with one opt-in switched on (PerfConfig.opt_ins(): plus-fp8, plus-fp8_rowwise, ...)
and each again with LoRA (`lora-` prefix: the shipped finetune recipe with peft=lora on a random base checkpoint).
Each variant builds a fresh Trainer from the recipe (mock data, no checkpoints), runs `--warmup` steps, then times
`--steps` steps reading each step's values one step late, as the training loop does. `--repeats N` runs the whole
list N times interleaved, so drifts of the card hit every variant alike; compare medians.
The HF anchor (bench/hf_baseline_anchor.py: eager, +torch.compile, +PEFT LoRA r32) runs first unless `--hf none`.
FLOPs/token are counted as the anchor counts them (gemma3_runtime.training.flops); MFU is vs 989 TFLOP/s bf16.

GPU:        python3 bench/train_throughput.py --repeats 3 --json $OUT/train_throughput.json
CPU smoke:  python3 bench/train_throughput.py --device cpu --tiny --hf none --variants defaults,lora-defaults
CP memory point (docs/CONTEXT_PARALLEL.md): python3 bench/train_throughput.py --size 4b --seq 16384 --mbs 1 --nmb 1
            --hf none --variants lora-defaults --warmup 2 --steps 2 --json $OUT/cp_memory_point.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for sub in ("runtime", "launcher"):
    if str(HERE.parent / sub) not in sys.path:
        sys.path.insert(0, str(HERE.parent / sub))

import torch  # noqa: E402

ANCHOR = HERE / "hf_baseline_anchor.py"
PEAK_TFLOPS = 989.0
HF_PLANS = {"eager": ("sdpa", False, False), "lora": ("sdpa", True, False), "compile": ("sdpa", False, True)}
T_START = time.time()


def variants() -> dict[str, Any]:
    """name -> (PerfConfig, peft kind or None), generated from PerfConfig."""
    from gemma3_runtime.perf.config import PerfConfig

    perfs = {"defaults": PerfConfig(), "plain": PerfConfig.plain()}
    perfs.update({f"minus-{switch}": perf for switch, perf in PerfConfig.ablations().items()})
    perfs.update({f"plus-{switch}": perf for switch, perf in PerfConfig.opt_ins().items()})
    found = {name: (perf, None) for name, perf in perfs.items()}
    found.update({f"lora-{name}": (perf, "lora") for name, perf in perfs.items()})
    return found


class Records:
    """Prints one JSON line per record and rewrites --json after each (a run cut off still leaves its results)."""

    def __init__(self, path: str | None) -> None:
        self.path, self.rows = Path(path) if path else None, []
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, record: dict) -> dict:
        record.setdefault("t_s", round(time.time() - T_START, 1))
        self.rows.append(record)
        print(json.dumps(record), flush=True)
        if self.path:
            self.path.write_text(json.dumps(self.rows, indent=1))
        return record


def run_config(args: argparse.Namespace, perf: Any, peft: str | None, base: str | None, save: str | None = None):
    """The recipe's ConfigContainer for one measurement: mock data, the bench's batch shape, no checkpoints."""
    from gemma3_runtime.training.recipes import get_recipe

    size = "tiny" if args.tiny else args.size
    if peft:
        cfg = get_recipe(f"gemma3_{size}_finetune")(pretrained_checkpoint=base, peft=peft)
    else:
        cfg = get_recipe(f"gemma3_{size}_pretrain")()
    cfg.name = "train_throughput"
    cfg.train.device = args.device
    # one card (the 4B pretrain recipe's own layout is TP 2)
    cfg.parallelism.tensor_model_parallel_size = cfg.parallelism.pipeline_model_parallel_size = 1
    cfg.data.kind, cfg.data.seq_length = "mock", args.seq
    cfg.train.micro_batch_size, cfg.train.global_batch_size = args.mbs, args.mbs * args.nmb
    cfg.train.train_iters = args.warmup + args.steps + 1
    cfg.checkpoint.save, cfg.checkpoint.load, cfg.checkpoint.save_interval = save, None, None
    cfg.checkpoint.save_at_end = save is not None
    cfg.eval.interval, cfg.eval.at_start, cfg.eval.task_accuracy = None, False, False
    cfg.logging.tensorboard_dir, cfg.logging.wandb_project = None, None
    cfg.logging.progress_bar, cfg.logging.loss_curve_png = False, False
    cfg.perf = perf
    return cfg


def random_base(args: argparse.Namespace, workdir: Path) -> str:
    """A base checkpoint of random weights for the LoRA variants (one plain step of the pretrain recipe)."""
    from gemma3_runtime.perf.config import PerfConfig
    from gemma3_runtime.training.trainer import train

    cfg = run_config(args, PerfConfig.plain(), None, None, save=str(workdir / "base"))
    cfg.train.train_iters = 1
    # the weights are random anyway: one short step, so a full-parameter step of the 4B fits beside its optimizer
    cfg.data.seq_length = min(cfg.data.seq_length, 4096)
    cfg.train.micro_batch_size = cfg.train.global_batch_size = 1
    return train(cfg).checkpoint


def measure(name: str, perf: Any, peft: str | None, args: argparse.Namespace, base: str | None) -> dict:
    """Build a Trainer for the variant and time its train_step."""
    from gemma3_runtime.training.trainer import Trainer

    device = torch.device(args.device)
    free_memory(device)
    t_build = time.time()
    trainer = Trainer(run_config(args, perf, peft, base))
    try:
        trainer.build()
        first = trainer.train_step().resolve()
        for _ in range(args.warmup - 1):
            trainer.train_step().resolve()
        t0 = time.time()
        start = end = None
        if device.type == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        previous = None
        for _ in range(args.steps):  # each step's values are read after the next step is launched
            current = trainer.train_step()
            if previous is not None:
                previous.resolve()
            previous = current
        last = previous.resolve()
        if end is not None:
            end.record()
            torch.cuda.synchronize()
            step_s = start.elapsed_time(end) / 1000 / args.steps
        else:
            step_s = (time.time() - t0) / args.steps
        tok_s = args.mbs * args.nmb * args.seq / step_s
        flops = trainer.flops_per_token * tok_s
        return dict(
            impl="ours",
            variant=name,
            seq=args.seq,
            mbs=args.mbs,
            micro_batches=args.nmb,
            peft=peft,
            perf=dataclasses.asdict(perf),
            speed_layer=trainer.speed_layer,
            step_s=round(step_s, 4),
            tok_s=round(tok_s),
            tflops=round(flops / 1e12, 1),
            mfu_vs_989=round(flops / (PEAK_TFLOPS * 1e12), 3),
            peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1) if device.type == "cuda" else None,
            first_loss=round(first.loss, 5),
            loss=round(last.loss, 5),
            build_and_warmup_s=round(t0 - t_build, 1),
        )
    except Exception as exc:  # a failing variant is a result too; keep measuring the others
        return dict(impl="ours", variant=name, error=repr(exc)[:400], trace=traceback.format_exc()[-1500:])
    finally:
        trainer.close()
        del trainer
        torch._dynamo.reset()
        free_memory(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def measure_hf(name: str, args: argparse.Namespace) -> dict:
    """One configuration of the HF anchor (a verbatim copy of the reference script)."""
    spec = importlib.util.spec_from_file_location("hf_baseline_anchor", ANCHOR)
    anchor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anchor)
    attn, lora, compile_ = HF_PLANS[name]
    try:
        return dict(anchor.bench(attn, args.seq, args.mbs, lora, compile_=compile_), impl="hf", variant=name)
    except Exception as exc:
        return dict(impl="hf", variant=name, error=repr(exc)[:400])
    finally:
        torch._dynamo.reset()
        free_memory(torch.device(args.device))


def summary(rows: list[dict]) -> str:
    """Median tokens/s per variant over the repeats."""
    by_variant: dict[str, list[int]] = {}
    for r in rows:
        if r.get("impl") in ("ours", "hf") and "tok_s" in r:
            by_variant.setdefault(f"{r['impl']}/{r['variant']}", []).append(r["tok_s"])
    lines = [f"{'variant':36s} {'runs':>4s} {'median tok/s':>12s}"]
    for name, values in by_variant.items():
        values = sorted(values)
        lines.append(f"{name:36s} {len(values):>4d} {values[len(values) // 2]:>12d}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="the tiny model (a CPU smoke test of the script)")
    ap.add_argument(
        "--size", default="1b", choices=("1b", "4b"), help="Gemma 3 size of our variants (the HF anchor: 1b)"
    )
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--mbs", type=int, default=8, help="micro-batch size")
    ap.add_argument("--nmb", type=int, default=2, help="micro-batches per optimizer step")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1, help="run the variant list this many times, interleaved")
    ap.add_argument("--variants", default="defaults,lora-defaults", help="comma list, or 'all'")
    ap.add_argument("--hf", default="eager,compile,lora", help=f"comma list of {','.join(HF_PLANS)} or none")
    ap.add_argument("--json", default=None, help="write all records here")
    ap.add_argument("--budget-s", type=float, default=1e9, help="start no new measurement after this many seconds")
    args = ap.parse_args(argv)
    if args.tiny:
        args.seq = min(args.seq, 64)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    table = variants()
    names = list(table) if args.variants == "all" else [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; expected some of {', '.join(table)}")
    records = Records(args.json)
    device = torch.device(args.device)
    records.add(
        dict(impl="env", torch=torch.__version__, gpu=torch.cuda.get_device_name() if device.type == "cuda" else "cpu")
    )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    if not args.tiny and args.hf != "none":
        for name in [n for n in args.hf.split(",") if n]:
            records.add(measure_hf(name, args))
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as workdir:
        base = random_base(args, Path(workdir)) if any(table[n][1] for n in names) else None
        for repeat in range(args.repeats):
            for name in names:
                if time.time() - T_START > args.budget_s:
                    records.add(dict(impl="skipped", variant=name, reason=f"--budget-s {args.budget_s} reached"))
                    continue
                perf, peft = table[name]
                records.add(dict(measure(name, perf, peft, args, base), repeat=repeat))
    print(summary(records.rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

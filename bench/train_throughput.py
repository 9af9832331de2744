"""Training throughput of the step users run - `Trainer.train_step` of gemma3_runtime - on one card, beside the
Hugging Face anchor at its best micro-batch.

Benchmark, not a test: prints numbers, never fails on speed. Our variants are generated from PerfConfig:
  defaults            PerfConfig() as shipped (what a user gets without setting any perf field)
  plain               PerfConfig.plain(): every fast path off
  minus-<switch>      the defaults with that one switch at its plain value, for every switch the defaults turn on
  plus-<switch>       the defaults with one opt-in switched on (PerfConfig.opt_ins(): plus-fp8, plus-fp8_rowwise, ...)
and each again with LoRA (`lora-` prefix: the shipped finetune recipe with LoRA r32 / alpha 32 on all linears - the
anchor's PEFT config - on random base weights: the model's own seeded init, no base checkpoint written or read).
Each variant builds a fresh Trainer from the recipe (mock data, no checkpoints), runs `--warmup` steps, then times
`--steps` steps reading each step's values one step late, as the training loop does. `--repeats N` runs the whole
list N times interleaved, so drifts of the card hit every variant alike; compare medians.
`--size 1b|4b|12b` picks the Gemma 3 size of ours and of the anchor (GEMMA3_SIZE). `--mbs` and `--hf-mbs` take a
comma list: a micro-batch sweep, run in the order given; a micro-batch that runs out of memory is recorded as
status "oom" and every larger one left in the list is skipped. Give the larger ones first when the budget is short.
The HF anchor (bench/hf_baseline_anchor.py: eager, +torch.compile, +PEFT LoRA r32) runs first unless `--hf none`;
the 4B/12B anchors build their model on the card (--hf-init-device), which changes only their start-up.
FLOPs/token are counted as the anchor counts them (gemma3_runtime.training.flops); MFU is vs 989 TFLOP/s bf16.
The summary names each anchor's best micro-batch; bench/front_table.py turns the JSON into PERFORMANCE.md's rows.

GPU:        python3 bench/train_throughput.py --repeats 3 --json $OUT/train_throughput.json
Sweep:      python3 bench/train_throughput.py --hf compile,lora --hf-mbs 8,4,2,1 --mbs 8 --json $OUT/sweep.json
CPU smoke:  python3 bench/train_throughput.py --device cpu --tiny --hf none --variants defaults,lora-defaults
CP memory point (docs/CONTEXT_PARALLEL.md): python3 bench/train_throughput.py --size 4b --seq 16384 --mbs 1 --nmb 1
            --hf none --variants lora-defaults --warmup 2 --steps 2 --json $OUT/cp_memory_point.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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
from front_table import best_of_sweep  # noqa: E402

ANCHOR = HERE / "hf_baseline_anchor.py"
PEAK_TFLOPS = 989.0
HF_PLANS = {"eager": ("sdpa", False, False), "lora": ("sdpa", True, False), "compile": ("sdpa", False, True)}
#: the anchor's PEFT config (r32, alpha 32, all seven projections = our four linears), so LoRA rows compare alike
ANCHOR_LORA = dict(rank=32, alpha=32.0)
RECOMPUTE = {"none": (None, None, None), "full": ("full", "uniform", 1), "selective": ("selective", None, None)}
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


def size_of(args: argparse.Namespace) -> str:
    return "tiny" if args.tiny else args.size


def run_config(args: argparse.Namespace, perf: Any, peft: str | None, mbs: int, base: str | None):
    """The recipe's ConfigContainer for one measurement: mock data, the bench's batch shape, no checkpoints."""
    from gemma3_runtime.peft.config import PeftConfig
    from gemma3_runtime.training.recipes import get_recipe

    if peft:
        cfg = get_recipe(f"gemma3_{size_of(args)}_finetune")(pretrained_checkpoint=base, peft=peft)
        cfg.peft = PeftConfig.for_kind(peft, **ANCHOR_LORA)
    else:
        cfg = get_recipe(f"gemma3_{size_of(args)}_pretrain")()
    cfg.name = "train_throughput"
    cfg.train.device = args.device
    # one card (the 4B/12B pretrain recipes' own layouts are TP 2 / TP 4)
    cfg.parallelism.tensor_model_parallel_size = cfg.parallelism.pipeline_model_parallel_size = 1
    cfg.data.kind, cfg.data.seq_length = "mock", args.seq
    cfg.train.micro_batch_size, cfg.train.global_batch_size = mbs, mbs * args.nmb
    cfg.train.train_iters = args.warmup + args.steps + 1
    cfg.checkpoint.save, cfg.checkpoint.load, cfg.checkpoint.save_interval = None, None, None
    cfg.checkpoint.save_at_end = False
    cfg.eval.interval, cfg.eval.at_start, cfg.eval.task_accuracy = None, False, False
    cfg.logging.tensorboard_dir, cfg.logging.wandb_project = None, None
    cfg.logging.progress_bar, cfg.logging.loss_curve_png = False, False
    cfg.perf = perf
    return cfg


def random_base(args: argparse.Namespace, workdir: Path) -> str:
    """A base "checkpoint" that holds only the architecture (run_config.yaml, committed by its tracker), no tensors:
    the LoRA variants resolve it like any base, then keep the model's own seeded random init instead of loading
    (BenchTrainer). No training step, no optimizer state, no weights written: a 12B base would cost minutes and
    tens of GB of host memory to write and read back, and it changes nothing a step does."""
    import yaml

    from gemma3_runtime.checkpoint.layout import FORMAT, RUN_CONFIG_FILE, TRACKER_FILE, iter_dir_name
    from gemma3_runtime.training.recipes.common import model_for_size

    base = workdir / "random_base"
    (base / iter_dir_name(0)).mkdir(parents=True)
    config = {"format": FORMAT, "model": model_for_size(size_of(args)).to_dict()}
    (base / iter_dir_name(0) / RUN_CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    (base / TRACKER_FILE).write_text("0\n")
    return str(base)


def bench_trainer(cfg: Any, recompute: str) -> Any:
    """The Trainer users run, with two bench-only changes to its build: the base weights stay the seeded random init
    (nothing to load, see random_base), and `recompute` sets the provider's activation recompute."""
    from gemma3_runtime.model.provider import Gemma3ModelProvider
    from gemma3_runtime.training.trainer import Trainer

    granularity, method, layers = RECOMPUTE[recompute]

    class BenchTrainer(Trainer):
        def _build_model(self) -> None:
            self.pretrained = None  # random base weights: keep the seeded init the provider draws on the device
            original = Gemma3ModelProvider.__dict__["from_config"]  # the classmethod itself, restored as it was
            if granularity is not None:
                fields = dict(recompute_granularity=granularity, recompute_method=method, recompute_num_layers=layers)
                Gemma3ModelProvider.from_config = classmethod(lambda cls, config, **kw: cls(config, **{**kw, **fields}))
            try:
                super()._build_model()
            finally:
                Gemma3ModelProvider.from_config = original

    return BenchTrainer(cfg)


def is_oom(exc: BaseException) -> bool:
    """Out of memory, also when torch.compile wraps it."""
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def measure(
    name: str, perf: Any, peft: str | None, mbs: int, args: argparse.Namespace, base: str | None, repeat: int = 0
) -> dict:
    """Build a Trainer for the variant and time its train_step."""
    device = torch.device(args.device)
    free_memory(device)
    t_build = time.time()
    cfg = run_config(args, perf, peft, mbs, base)
    trainer = bench_trainer(cfg, args.recompute)
    shape = dict(impl="ours", variant=name, size=size_of(args), seq=args.seq, mbs=mbs, micro_batches=args.nmb)
    shape["repeat"] = repeat
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
        tok_s = mbs * args.nmb * args.seq / step_s
        flops = trainer.flops_per_token * tok_s
        return dict(
            shape,
            peft=peft,
            lora=dataclasses.asdict(cfg.peft) if cfg.peft is not None else None,
            recompute=args.recompute,
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
        if is_oom(exc):
            return dict(shape, peft=peft, status="oom", error=repr(exc)[:200])
        return dict(shape, peft=peft, error=repr(exc)[:400], trace=traceback.format_exc()[-1500:])
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


def measure_hf(name: str, mbs: int, args: argparse.Namespace) -> dict:
    """One configuration of the HF anchor (a verbatim copy of the reference script) at `args.size`; the 4B/12B are
    built on the card (--hf-init-device): the anchor's fp32 init of a 12B on the host takes minutes and ~48 GB."""
    import os

    os.environ["GEMMA3_SIZE"] = args.size
    spec = importlib.util.spec_from_file_location("hf_baseline_anchor", ANCHOR)
    anchor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anchor)
    attn, lora, compile_ = HF_PLANS[name]
    shape = dict(impl="hf", variant=name, size=args.size, seq=args.seq, mbs=mbs)
    try:
        with torch.device(args.hf_init_device):
            measured = anchor.bench(
                attn, args.seq, mbs, lora, steps=args.hf_steps, warm=args.hf_warmup, compile_=compile_
            )
        return dict(measured, **shape, init_device=args.hf_init_device)
    except Exception as exc:
        return dict(shape, status="oom" if is_oom(exc) else "error", error=repr(exc)[:400])
    finally:
        torch._dynamo.reset()
        free_memory(torch.device(args.device))


def sweep(sizes: list[int], measure_one: Any, records: Records, label: str, budget_s: float, first_fit: bool = False):
    """Measure each micro-batch in the order given; after an OOM, every larger one is skipped (and recorded so).
    `first_fit`: stop at the first one that runs (a descending list finds the largest that fits)."""
    oom_at: int | None = None
    for mbs in sizes:
        if time.time() - T_START > budget_s:
            records.add(dict(impl="skipped", variant=label, mbs=mbs, reason=f"budget of {budget_s} s reached"))
        elif oom_at is not None and mbs > oom_at:
            records.add(dict(impl="skipped", variant=label, mbs=mbs, reason=f"micro-batch {oom_at} ran out of memory"))
        else:
            record = records.add(measure_one(mbs))
            if record.get("status") == "oom":
                oom_at = mbs if oom_at is None else min(oom_at, mbs)
            elif first_fit and "tok_s" in record:
                return


def run_anchor(args: argparse.Namespace, records: Records) -> None:
    """Each HF plan's micro-batch sweep (none with --tiny: the anchor needs CUDA)."""
    hf_budget = min(args.budget_s, args.hf_budget_s or args.budget_s)
    if not args.tiny:
        for name in args.hf_names:
            sweep(args.hf_mbs, lambda mbs, name=name: measure_hf(name, mbs, args), records, f"hf/{name}", hf_budget)


def summary(rows: list[dict]) -> str:
    """Median tokens/s per variant and micro-batch over the repeats, then each anchor's best micro-batch."""
    by_variant: dict[str, list[int]] = {}
    for r in rows:
        if r.get("impl") in ("ours", "hf") and "tok_s" in r:
            by_variant.setdefault(f"{r['impl']}/{r['variant']} mbs {r.get('mbs')}", []).append(r["tok_s"])
    lines = [f"{'variant':40s} {'runs':>4s} {'median tok/s':>12s}"]
    for name, values in by_variant.items():
        values = sorted(values)
        lines.append(f"{name:40s} {len(values):>4d} {values[len(values) // 2]:>12d}")
    for plan in HF_PLANS:
        best = best_of_sweep([r for r in rows if r.get("impl") == "hf" and r.get("variant") == plan])
        if best is not None:
            lines.append(f"best anchor hf/{plan}: micro-batch {best['mbs']}, {best['tok_s']} tok/s")
    return "\n".join(lines)


def mbs_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="the tiny model (a CPU smoke test of the script)")
    ap.add_argument("--size", default="1b", choices=("1b", "4b", "12b"), help="Gemma 3 size of ours and the anchor")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--mbs", type=mbs_list, default=[8], help="our micro-batch size(s), comma list = sweep")
    ap.add_argument("--hf-mbs", type=mbs_list, default=None, help="the anchor's micro-batch sweep (default: --mbs)")
    ap.add_argument(
        "--mbs-first-fit",
        action="store_true",
        help="our sweep stops at the first micro-batch that runs (largest first)",
    )
    ap.add_argument("--nmb", type=int, default=2, help="micro-batches per optimizer step")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--hf-steps", type=int, default=8, help="the anchor's timed steps")
    ap.add_argument("--hf-warmup", type=int, default=3, help="the anchor's warmup steps (compile happens here)")
    ap.add_argument(
        "--hf-init-device",
        default=None,
        choices=("cpu", "cuda"),
        help="where the anchor builds its model (default: cpu for the 1B, as it always ran; cuda for 4B/12B)",
    )
    ap.add_argument("--recompute", default="none", choices=tuple(RECOMPUTE), help="our activation recompute")
    ap.add_argument("--repeats", type=int, default=1, help="run the variant list this many times, interleaved")
    ap.add_argument("--variants", default="defaults,lora-defaults", help="comma list, or 'all'")
    ap.add_argument("--hf", default="eager,compile,lora", help=f"comma list of {','.join(HF_PLANS)} or none")
    ap.add_argument("--ours-first", action="store_true", help="measure ours before the anchor (default: after)")
    ap.add_argument("--json", default=None, help="write all records here")
    ap.add_argument("--budget-s", type=float, default=1e9, help="start no new measurement after this many seconds")
    ap.add_argument("--hf-budget-s", type=float, default=None, help="start no new anchor measurement after this (s)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.seq = min(args.seq, 64)
    args.hf_mbs = args.hf_mbs or args.mbs
    args.hf_init_device = args.hf_init_device or ("cpu" if args.size == "1b" else args.device)
    hf_names = [n for n in args.hf.split(",") if n and n != "none"]
    unknown = [n for n in hf_names if n not in HF_PLANS]
    if unknown:
        ap.error(f"--hf: unknown {unknown}; expected some of {', '.join(HF_PLANS)} or none")
    args.hf_names = hf_names
    table = variants()
    args.names = list(table) if args.variants == "all" else [n for n in args.variants.split(",") if n]
    unknown = [n for n in args.names if n not in table]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; expected some of {', '.join(table)}")
    return args


def main(argv: list[str] | None = None) -> int:
    import datetime
    import logging
    import warnings

    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    table = variants()
    records = Records(args.json)
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    records.add(
        dict(impl="env", torch=torch.__version__, gpu=gpu, date=now, argv=sys.argv[1:] if argv is None else argv)
    )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    if not args.ours_first:
        run_anchor(args, records)
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as workdir:
        base = random_base(args, Path(workdir)) if any(table[n][1] for n in args.names) else None
        for repeat in range(args.repeats):
            for name in args.names:
                perf, peft = table[name]
                one = functools.partial(measure, name, perf, peft, args=args, base=base, repeat=repeat)
                sweep(args.mbs, one, records, name, args.budget_s, args.mbs_first_fit)
    if args.ours_first:
        run_anchor(args, records)
    print(summary(records.rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

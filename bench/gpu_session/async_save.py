"""How long a checkpoint save blocks the training loop, synchronous vs checkpoint.async_save, and how much slower a
step is while a background save is being written (issue 19, target 3: <= 3 s blocked, <= 10% slower).

The 1B full-parameter Trainer of bench/train_throughput.py (recipe defaults, mock data, the recipe's distributed
optimizer, seq 4096, micro-batch 8 x 2) on one card: warm-up steps, then
  1. `--steps` steps without a save (mean step time, the baseline), and the time the optimizer's sharded state dict
     takes to build (part of every save's blocking time);
  2. `--async-saves` times: an asynchronous save (the time `Trainer.save(blocking=False)` holds the loop), then
     `--steps` steps polling the save as the loop does (their mean step time, and whether the save was still being
     written after them), then the wait for its commit;
  3. a synchronous save (the time it holds the loop: the whole write).
Each committed checkpoint is deleted right after it is timed (a full 1B training state is ~14 GB).
Prints one JSON object (and writes it to --json).

GPU:        python3 bench/gpu_session/async_save.py --json $OUT/async_save.json   (run.sh part `asyncsave`)
CPU smoke:  python3 bench/gpu_session/async_save.py --device cpu --tiny --seq 32 --mbs 1 --nmb 2 --steps 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for train_throughput's run_config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _steps(trainer, n: int, device: torch.device, poll: bool) -> float:
    """Mean wall time of `n` steps, each resolved (so the time is the step's), polling an in-flight save as the loop
    does."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step = trainer.train_step()
        if poll and trainer.saver is not None:
            trainer.saver.poll()
        step.resolve()
    _sync(device)
    return (time.perf_counter() - t0) / n


def _timed_save(trainer, save_dir: Path, blocking: bool, device: torch.device) -> tuple[float, Path]:
    trainer.save_dir = str(save_dir)
    trainer.cfg.checkpoint.async_save = not blocking
    _sync(device)
    t0 = time.perf_counter()
    path = trainer.save(blocking=blocking)
    return time.perf_counter() - t0, path


def _state_dict_build_s(trainer, device: torch.device, in_place: bool) -> float | None:
    """The part of a save's blocking time spent building the optimizer's sharded state dict: megatron's
    `fully_reshardable` (a gather through host memory with the distributed optimizer) or, `in_place`, the one
    asynchronous saves use with one data-parallel rank (None where that does not apply)."""
    from gemma3_runtime.loader import sharded_model_state
    from gemma3_runtime.training.checkpointing import distributed_optimizer_state_in_place

    _sync(device)
    t0 = time.perf_counter()
    model_sd = sharded_model_state(trainer.models, trainer.adapters_only)
    if in_place:
        state = distributed_optimizer_state_in_place(trainer.optimizer, model_sd)
        if state is None:
            return None
    else:
        state = trainer.optimizer.sharded_state_dict(model_sd)
    _sync(device)
    del state
    return round(time.perf_counter() - t0, 3)


def measure(args: argparse.Namespace) -> dict:
    from train_throughput import run_config

    from gemma3_runtime.perf.config import PerfConfig
    from gemma3_runtime.training.trainer import Trainer

    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="async_save_", dir=args.workdir))
    cfg = run_config(args, PerfConfig(), None, args.mbs, None)
    cfg.checkpoint.save = str(work / "unused")
    cfg.train.train_iters = args.warmup + (2 + 2 * args.async_saves) * args.steps + 10
    result: dict = dict(
        model="tiny" if args.tiny else args.size,
        seq=args.seq,
        mbs=args.mbs,
        micro_batches=args.nmb,
        device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        distributed_optimizer=cfg.optimizer.use_distributed_optimizer,
    )
    trainer = Trainer(cfg)
    try:
        trainer.build()
        for _ in range(args.warmup):
            trainer.train_step().resolve()
        result["step_s_no_save"] = round(_steps(trainer, args.steps, device, poll=False), 4)
        result["optimizer_state_dict_build_s"] = _state_dict_build_s(trainer, device, in_place=False)
        result["optimizer_state_dict_in_place_s"] = _state_dict_build_s(trainer, device, in_place=True)
        result["async"] = []
        for i in range(args.async_saves):
            blocked, path = _timed_save(trainer, work / f"async{i}", blocking=False, device=device)
            started = time.perf_counter() - blocked
            in_flight = _steps(trainer, args.steps, device, poll=True)
            still_writing = trainer.saver.in_flight is not None
            trainer.saver.wait()
            result["async"].append(
                dict(
                    blocked_s=round(blocked, 3),
                    step_s_save_in_flight=round(in_flight, 4),
                    slowdown=round(in_flight / result["step_s_no_save"] - 1, 4),
                    still_writing_after_the_steps=still_writing,
                    committed_after_s=round(time.perf_counter() - started, 1),
                    checkpoint_mb=round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6, 1),
                )
            )
            shutil.rmtree(path.parent, ignore_errors=True)
            print(json.dumps(result["async"][-1]), flush=True)
        result["step_s_no_save_after"] = round(_steps(trainer, args.steps, device, poll=False), 4)
        if not args.skip_sync:
            blocked, path = _timed_save(trainer, work / "sync", blocking=True, device=device)
            result["sync_blocked_s"] = round(blocked, 2)
            shutil.rmtree(path.parent, ignore_errors=True)
        if device.type == "cuda":
            result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    finally:
        trainer.close()
        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="the tiny model (a CPU smoke test of the script)")
    ap.add_argument("--size", default="1b")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--mbs", type=int, default=8, help="micro-batch size")
    ap.add_argument("--nmb", type=int, default=2, help="micro-batches per optimizer step")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed window")
    ap.add_argument("--async-saves", type=int, default=2, help="asynchronous saves timed one after the other")
    ap.add_argument("--skip-sync", action="store_true", help="do not time a synchronous save")
    ap.add_argument("--workdir", default=None, help="where the checkpoints go (default: the system temp dir)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    result = measure(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()

"""Helpers for the training tests: tiny configs, running the CLI as a real subprocess, comparing checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def tiny_pretrain_cfg(save: Path, train_iters: int = 4, gbs: int = 4, seq: int = 16, **overrides):
    """The tiny random Gemma 3 on mock data, CPU, every step logged; LR high enough that weights really move."""
    from gemma3_runtime.training.config import apply_overrides
    from gemma3_runtime.training.recipes import gemma3_tiny_pretrain_config

    cfg = gemma3_tiny_pretrain_config(
        name="tiny",
        train_iters=train_iters,
        global_batch_size=gbs,
        seq_length=seq,
        lr=1e-2,
        min_lr=1e-3,
        lr_warmup_iters=1,
        dir=str(save),
    )
    cfg.train.device = "cpu"
    cfg.logging.log_interval = 1
    cfg.logging.loss_curve_png = False
    cfg.eval.interval = None
    cfg.checkpoint.save_interval = None
    apply_overrides(cfg, [f"{k}={v}" for k, v in overrides.items()])
    return cfg


def runtime_env() -> dict[str, str]:
    parts = [str(REPO / "runtime"), str(REPO / "launcher"), str(REPO / "tests")]
    if os.environ.get("PYTHONPATH"):  # e.g. the GPU machine's megatron-core, installed with --target
        parts.append(os.environ["PYTHONPATH"])
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(parts),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONUNBUFFERED": "1",
    }


def run_cli_args(save: Path, train_iters: int, extra: list[str] = ()) -> list[str]:
    """`gemma3-runtime run` argv for the tiny pretraining used by the subprocess tests."""
    return [
        sys.executable,
        "-m",
        "gemma3_runtime.cli.main",
        "run",
        "--recipe",
        "gemma3_tiny_pretrain",
        "--device",
        "cpu",
        f"checkpoint.save={save}",
        f"train.train_iters={train_iters}",
        "train.global_batch_size=4",
        "data.seq_length=16",
        "optimizer.lr=0.01",
        "optimizer.min_lr=0.001",
        "scheduler.lr_warmup_iters=1",
        "logging.log_interval=1",
        "logging.loss_curve_png=false",
        "eval.interval=null",
        *extra,
    ]


def step_losses(save: Path) -> list[float]:
    lines = (save / "steps.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if line.strip()]


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a committed checkpoint (model, optimizer), as plain tensors."""
    from megatron.core.dist_checkpointing.serialization import load_plain_tensors

    from gemma3_runtime.checkpoint.layout import resolve_checkpoint

    created = not torch.distributed.is_initialized()
    if created:  # dist_checkpointing reads need a (1-process) group; it is destroyed again below
        torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, torch.Tensor):
            flat[prefix] = value

    try:
        walk("", load_plain_tensors(str(resolve_checkpoint(path).iter_dir)))
    finally:
        if created:  # left behind, a later Trainer on CUDA would find a gloo group (platform refuses it)
            torch.distributed.destroy_process_group()
    return flat


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def run_subprocess(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=runtime_env(), cwd=str(REPO))


def assert_disk_full_keeps_iteration_2(tmp_path: Path, train_iters: int, overrides: list[str]) -> None:
    """Run `gemma3-runtime run` on a real 4 MiB tmpfs that holds the tiny model's first checkpoint but not a second:
    exit STORAGE_FULL_EXIT_CODE with one error line naming the directory, and iteration 2 still committed and loadable.
    """
    import shlex

    import pytest
    from procs import run_on_small_tmpfs

    from gemma3_launch.contract import STORAGE_FULL_EXIT_CODE
    from gemma3_runtime.checkpoint.layout import read_tracker

    mnt, out = tmp_path / "small", tmp_path / "copied"
    save = mnt / "ck"
    run = shlex.join(run_cli_args(save, train_iters, overrides))
    script = f"{run}\ncode=$?\ncp -a {shlex.quote(str(save))} {shlex.quote(str(out))}\nexit $code\n"
    try:
        res = run_on_small_tmpfs(mnt, "4m", script, runtime_env(), timeout=600)
    except RuntimeError as exc:
        pytest.fail(f"the disk-full test cannot build its small file system: {exc}")
    assert res.returncode == STORAGE_FULL_EXIT_CODE, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and str(save) in errors[0] and "no space left" in errors[0], errors
    assert "Traceback" not in res.stderr
    assert "iteration 2 is still the latest checkpoint" in errors[0]
    assert read_tracker(out) == 2
    assert [p.name for p in out.iterdir() if p.name.startswith(("iter_", ".iter_"))] == ["iter_0000002"]
    assert checkpoint_tensors(out)  # the previous checkpoint loads

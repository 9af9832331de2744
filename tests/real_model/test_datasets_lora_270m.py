"""LoRA on the real Gemma 3 270M from a Parquet chat dataset read through HF `datasets` (made here from the bundled
task): the token batches equal the JSONL path's, and a 2-rank job (gloo) that is stopped and resumed gives the loss
curve of a single-process JSONL run; the Parquet data is tokenized once across the 2 ranks and only read from the
cache after the restart."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from data_fixtures import bundled_chat_rows, write_jsonl, write_parquet
from procs import free_port
from train_helpers import run_subprocess

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

STEPS, STOP_AT = 4, 2
ROWS = 96
#: the run's settings, shared by the in-process JSONL run and the torchrun Parquet job
OVERRIDES = [
    f"train.train_iters={STEPS}",
    "train.global_batch_size=4",
    "train.micro_batch_size=1",
    "data.seq_length=128",
    "data.valid_paths=null",
    "optimizer.lr=3e-3",
    "scheduler.lr_warmup_iters=1",
    "eval.interval=null",
    "eval.task_accuracy=false",
    "checkpoint.save_interval=null",
    "logging.log_interval=1",
    "logging.loss_curve_png=false",
]


def _torchrun_job(save, base, data_path, extra=()):
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--nnodes=1",
        f"--master-port={free_port()}",
        "--master-addr=127.0.0.1",
        "-m",
        "gemma3_runtime.cli.main",
        "run",
        "--recipe",
        "gemma3_270m_finetune",
        "--peft",
        "lora",
        "--device",
        "cpu",
        f"--pretrained-checkpoint={base}",
        f"checkpoint.save={save}",
        f"data.data_paths=[{data_path}]",
        *OVERRIDES,
        *extra,
    ]


def test_parquet_lora_job_matches_jsonl_and_tokenizes_once(real_270m_checkpoint, real_270m_dir, tmp_path):
    from transformers import AutoTokenizer

    from gemma3_runtime.data.builder import build_datasets
    from gemma3_runtime.data.token_cache import read_events
    from gemma3_runtime.training.config import apply_overrides
    from gemma3_runtime.training.recipes import gemma3_270m_finetune_config
    from gemma3_runtime.training.trainer import train

    rows = bundled_chat_rows(limit=ROWS)
    jsonl, parquet = write_jsonl(tmp_path / "chat.jsonl", rows), write_parquet(tmp_path / "chat.parquet", rows)

    # the token batches: every packed sequence of the Parquet source equals the JSONL one
    tokenizer = AutoTokenizer.from_pretrained(str(real_270m_dir))
    datasets = []
    for path, cache in ((jsonl, None), (parquet, str(tmp_path / "probe_cache"))):
        cfg = gemma3_270m_finetune_config(name="probe", pretrained_checkpoint=str(real_270m_checkpoint), peft="lora")
        apply_overrides(cfg, [*OVERRIDES, f"data.data_paths=[{path}]"])
        datasets.append(build_datasets(cfg.data, cfg.train.seed, len(tokenizer), tokenizer, 16, 4, cache).train)
    assert len(datasets[0]) == len(datasets[1]) > STEPS * 4
    for i in range(len(datasets[0])):
        for key, value in datasets[0][i].items():
            np.testing.assert_array_equal(value, datasets[1][i][key], err_msg=f"sequence {i} {key}")

    # the reference loss curve: one process, JSONL
    cfg = gemma3_270m_finetune_config(
        name="jsonl", pretrained_checkpoint=str(real_270m_checkpoint), peft="lora", dir=str(tmp_path / "jsonl")
    )
    apply_overrides(cfg, [*OVERRIDES, f"data.data_paths=[{jsonl}]", "train.device=cpu"])
    reference = [loss for _, loss, _ in train(cfg).train_losses]

    # 2 ranks on the Parquet file: stopped at STOP_AT, then a new pair of processes resumes
    save = tmp_path / "parquet"
    first = run_subprocess(_torchrun_job(save, real_270m_checkpoint, parquet, [f"train.exit_interval={STOP_AT}"]))
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    events_first = sorted((e["rank"], e["outcome"]) for e in read_events(save / "data_cache"))
    second = run_subprocess(_torchrun_job(save, real_270m_checkpoint, parquet))
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    events_all = read_events(save / "data_cache")
    assert events_first == [(0, "prepared"), (1, "waited")]
    assert sorted((e["rank"], e["outcome"]) for e in events_all[2:]) == [(0, "hit"), (1, "hit")]
    assert "data cache hit" in second.stdout

    losses = [json.loads(line)["loss"] for line in (save / "steps.jsonl").read_text().splitlines() if line]
    print(f"\nLoRA 270M, JSONL 1 process: {reference}\nParquet 2 ranks, stopped+resumed: {losses}")
    assert len(losses) == STEPS
    np.testing.assert_allclose(losses, reference, rtol=1e-4)
    assert losses[-1] < losses[0]

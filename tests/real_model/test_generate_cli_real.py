"""`gemma3-runtime generate` on the real Gemma 3 270M: from a Megatron checkpoint written by `convert import`
(the tokenizer comes from the checkpoint), streamed to stdout; and the bad inputs that need a real model
(context overflow, a checkpoint of another architecture) - one line, exit 2, before any weights load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.real_model

REPO = Path(__file__).resolve().parents[2]
# greedy continuation of the real 270M (also in reference/test-assets.md), first 12 tokens
ONCE_UPON_A_TIME = ", there was a little girl named Lily. She was a"


def runtime_cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), str(REPO / "launcher")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "gemma3_runtime.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(REPO),
    )


def one_line_exit_2(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def imported_checkpoint(real_270m_dir, tmp_path_factory) -> Path:
    ckpt = tmp_path_factory.mktemp("gen") / "megatron"
    proc = runtime_cli(
        "convert", "import", "--hf-model", str(real_270m_dir), "--megatron-path", str(ckpt), "--device", "cpu"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ckpt


def test_generate_from_megatron_checkpoint_streams_greedy_text(imported_checkpoint, tmp_path):
    out_file = tmp_path / "out.jsonl"
    proc = runtime_cli(
        "generate",
        "--megatron_model_path",
        str(imported_checkpoint),
        "--prompt",
        "Once upon a time",
        "--max_new_tokens",
        "12",
        "--device",
        "cpu",
        "--output",
        str(out_file),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == ONCE_UPON_A_TIME + "\n"
    record = json.loads(out_file.read_text())
    assert record["text"] == ONCE_UPON_A_TIME and len(record["tokens"]) == 12
    assert record["finish_reason"] == "length"
    assert "time to first token" in proc.stderr


def test_context_overflow_is_one_line(real_270m_dir, capsys):
    from gemma3_runtime.cli.main import main

    code = main(
        [
            "generate",
            "--hf_model_path",
            str(real_270m_dir),
            "--prompt",
            "Once upon a time",
            "--max_new_tokens",
            "40000",
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "--max-new-tokens" in err[0] and "exceeds the model's context of 32768 tokens" in err[0]


def test_checkpoint_of_another_architecture_is_one_line(real_270m_dir, tmp_path, capsys):
    """A (weightless) committed checkpoint whose run_config says 1B, given with the 270M HF model."""
    from gemma3_runtime.checkpoint.layout import FORMAT
    from gemma3_runtime.cli.main import main
    from gemma3_runtime.model.config import Gemma3Config

    iter_dir = tmp_path / "ckpt" / "iter_0000000"
    iter_dir.mkdir(parents=True)
    config = {"format": FORMAT, "model": Gemma3Config.preset("1b").to_dict()}
    (iter_dir / "run_config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("0\n")
    code = main(
        [
            "generate",
            "--hf-model-path",
            str(real_270m_dir),
            "--megatron-model-path",
            str(tmp_path / "ckpt"),
            "--prompt",
            "hi",
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "different architecture" in err[0] and "hidden_size 640 vs 1152" in err[0]

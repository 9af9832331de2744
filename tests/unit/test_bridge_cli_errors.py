"""Bad input through the real `gemma3-runtime convert` CLI: exit 2, one line naming the file and the problem,
and nothing (partial) written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 100,
}


def convert(*args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), str(REPO / "launcher")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "gemma3_runtime.cli.main", "convert", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=str(REPO),
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory) -> Path:
    from model_helpers import hf_model, tiny_config

    path = tmp_path_factory.mktemp("tiny") / "hf"
    hf_model(tiny_config(num_layers=2)).save_pretrained(str(path))
    return path


def test_import_nonexistent_path(tmp_path):
    missing = tmp_path / "no_such_model"
    proc = convert("import", "--hf-model", str(missing), "--megatron-path", str(tmp_path / "out"), "--device", "cpu")
    assert_one_line_error(proc, str(missing), "does not exist")
    assert not (tmp_path / "out").exists()


def test_import_llama_config(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    proc = convert(
        "import", "--hf-model", str(tmp_path / "llama"), "--megatron-path", str(tmp_path / "out"), "--device", "cpu"
    )
    assert_one_line_error(proc, str(tmp_path / "llama" / "config.json"), "'llama'", "not Gemma 3")
    assert not (tmp_path / "out").exists()


def test_import_truncated_safetensors(tmp_path, tiny_hf_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_hf_dir.iterdir():
        data = f.read_bytes()
        (broken / f.name).write_bytes(data[: len(data) // 2] if f.suffix == ".safetensors" else data)
    proc = convert("import", "--hf-model", str(broken), "--megatron-path", str(tmp_path / "out"), "--device", "cpu")
    assert_one_line_error(proc, str(broken / "model.safetensors"), "truncated")
    assert not (tmp_path / "out").exists()


def test_export_checkpoint_without_iteration(tmp_path, tiny_hf_dir):
    (tmp_path / "ckpt").mkdir()
    proc = convert(
        "export",
        "--hf-model",
        str(tiny_hf_dir),
        "--megatron-path",
        str(tmp_path / "ckpt"),
        "--hf-path",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    )
    assert_one_line_error(proc, str(tmp_path / "ckpt"), "no checkpoint iteration")
    assert not (tmp_path / "out").exists()


def test_export_into_non_empty_dir_without_overwrite(tmp_path, tiny_hf_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = convert(
        "export", "--hf-model", str(tiny_hf_dir), "--megatron-path", str(tmp_path / "ckpt"), "--hf-path", str(out)
    )
    assert_one_line_error(proc, str(out), "not empty", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []

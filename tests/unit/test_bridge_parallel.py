"""The bridge under TP=2 and PP=2 (two gloo processes through torchrun and the real CLI) on a tiny random Gemma 3
with one kv head (fewer kv heads than TP ranks): import at TP=2, export at TP=2 (all-gather) and at PP=2 (stage
broadcast), every tensor equal. (TP=1 export is covered by the other round trips.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict:
    return {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), str(REPO / "launcher")]),
    }


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def convert(*args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    if nproc == 1:
        cmd = [sys.executable, "-m", "gemma3_runtime.cli.main", "convert", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={nproc}",
            "--nnodes=1",
            "--master-addr=127.0.0.1",
            f"--master-port={_port()}",
            "-m",
            "gemma3_runtime.cli.main",
            "convert",
            *args,
        ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, cwd=str(REPO))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _tensors(hf_dir: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        out.update(load_file(str(f)))
    out.pop("lm_head.weight", None)
    return out


def test_import_tp2_export_tp2_and_pp2_round_trip(tmp_path):
    import torch
    from model_helpers import hf_model, tiny_config

    cfg = tiny_config(num_layers=4, kv_heads=1, heads=4, vocab=300)  # padded vocab 384: pad rows on the last rank
    src = tmp_path / "hf"
    hf_model(cfg).save_pretrained(str(src))
    ckpt = tmp_path / "ckpt"
    convert("import", "--hf-model", str(src), "--megatron-path", str(ckpt), "--tp", "2", "--device", "cpu", nproc=2)
    convert(
        "export",
        "--hf-model",
        str(src),
        "--megatron-path",
        str(ckpt),
        "--hf-path",
        str(tmp_path / "tp2"),
        "--tp",
        "2",
        "--device",
        "cpu",
        nproc=2,
    )
    convert(
        "export",
        "--hf-model",
        str(src),
        "--megatron-path",
        str(ckpt),
        "--hf-path",
        str(tmp_path / "pp2"),
        "--pp",
        "2",
        "--device",
        "cpu",
        nproc=2,
    )
    original = _tensors(src)
    for out in ("tp2", "pp2"):
        exported = _tensors(tmp_path / out)
        assert sorted(exported) == sorted(original), out
        for name, tensor in original.items():
            assert torch.equal(exported[name], tensor), (out, name)


def test_export_overwrite_replaces_directory(tmp_path):
    from model_helpers import hf_model, tiny_config

    src = tmp_path / "hf"
    hf_model(tiny_config(num_layers=2)).save_pretrained(str(src))
    convert("import", "--hf-model", str(src), "--megatron-path", str(tmp_path / "ckpt"), "--device", "cpu")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    convert(
        "export",
        "--hf-model",
        str(src),
        "--megatron-path",
        str(tmp_path / "ckpt"),
        "--hf-path",
        str(out),
        "--overwrite",
        "--device",
        "cpu",
    )
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "hf", "out"]

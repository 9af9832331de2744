"""A multimodal (Gemma3ForConditionalGeneration, 4B+ layout) checkpoint: the text model is imported, the vision
tower skipped with a note, and export writes a text-only Gemma3ForCausalLM whose tensors equal the source's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def convert(*args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), str(REPO / "launcher")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "gemma3_runtime.cli.main", "convert", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_multimodal_text_part_round_trip(tmp_path):
    # the hub layout of google/gemma-3-4b-it & co; the transformers-5 layout (model.language_model.) differs only in
    # the prefix, which test_bridge_mapping covers
    prefix = "language_model.model."
    import torch
    from model_helpers import hf_model, tiny_config
    from safetensors.torch import load_file, save_file

    cfg = tiny_config(num_layers=2)
    text = {
        k.replace("model.", prefix, 1): v.contiguous()
        for k, v in hf_model(cfg).state_dict().items()
        if k != "lm_head.weight"
    }
    src = tmp_path / "mm"
    src.mkdir()
    vision = {
        "vision_tower.vision_model.embeddings.patch_embedding.weight": torch.randn(8, 3, 2, 2),
        "multi_modal_projector.mm_input_projection_weight": torch.randn(8, 64),
    }
    save_file({**text, **vision}, str(src / "model.safetensors"))
    text_config = {k: v for k, v in cfg.to_hf().items() if k != "architectures"}
    (src / "config.json").write_text(
        json.dumps(
            {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "text_config": text_config}
        )
    )
    imported = convert("import", "--hf-model", str(src), "--megatron-path", str(tmp_path / "ckpt"), "--device", "cpu")
    assert "vision tower not imported" in imported.stdout
    assert "2 vision/projector tensors skipped" in imported.stderr
    exported = convert(
        "export",
        "--hf-model",
        str(src),
        "--megatron-path",
        str(tmp_path / "ckpt"),
        "--hf-path",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    )
    assert "text-only Gemma3ForCausalLM" in exported.stdout
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and config["model_type"] == "gemma3_text"
    out = load_file(str(next((tmp_path / "out").glob("*.safetensors"))))
    assert sorted(out) == sorted(k.replace(prefix, "model.", 1) for k in text)
    for name, tensor in text.items():
        assert torch.equal(out[name.replace(prefix, "model.", 1)], tensor), name

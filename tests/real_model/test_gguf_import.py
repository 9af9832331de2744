"""Importing the real 270M straight from its `.gguf` file (dequantized through transformers' GGUF support) gives
exactly the Megatron weights that importing the HF directory made from that file gives."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.real_model


def test_gguf_import_equals_hf_dir_import(real_270m_dir, run_torchrun, tmp_path):
    from gemma3_runtime.assets import gemma3_270m_gguf

    out = tmp_path / "result.json"
    run_torchrun(
        "multiproc.bridge_workers:gguf_matches_hf_dir",
        nproc=1,
        timeout=1200,
        kwargs={"gguf_path": str(gemma3_270m_gguf()), "hf_dir": str(real_270m_dir), "out_path": str(out)},
    )
    result = json.loads(out.read_text())
    assert result["same_config"] and result["names"]
    assert result["count"] == 2 + 18 * 10
    assert result["different"] == []

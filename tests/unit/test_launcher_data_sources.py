"""Spec `data:` for HF `datasets` sources (text / sft) mapped to the runtime's DataConfig overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemma3_launch.cli import main
from gemma3_launch.loader import SpecError, validate
from gemma3_launch.plan import Cluster, make_plan

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _train_args(data: dict) -> tuple[str, ...]:
    spec = validate(
        {"name": "t", "kind": "pretrain", "recipe": "gemma3_tiny_pretrain", "checkpoint": {"dir": "/ck"}, "data": data}
    )
    return next(s for s in make_plan(spec, Cluster("slurm")).steps if s.name == "train").args


def test_text_format_maps_every_field_to_the_runtime():
    args = _train_args(
        {
            "format": "text",
            "paths": ["hf:OWNER/NAME", "/d/a.parquet"],
            "text_key": "body",
            "split": "validation",
            "subset": "en",
            "cache_dir": "/cache",
        }
    )
    assert "data.kind=text" in args
    assert f"data.data_paths={json.dumps(['hf:OWNER/NAME', '/d/a.parquet'])}" in args
    for want in (
        'data.text_key="body"',
        'data.hf_split="validation"',
        'data.hf_subset="en"',
        'data.cache_dir="/cache"',
    ):
        assert want in args


def test_sft_paths_take_any_datasets_source_and_unset_fields_stay_runtime_defaults():
    args = _train_args({"format": "sft", "paths": ["hf:OWNER/chat"], "split": "train_sft"})
    assert "data.kind=sft" in args and 'data.hf_split="train_sft"' in args
    assert not any(a.startswith(("data.text_key", "data.hf_subset", "data.cache_dir")) for a in args)


@pytest.mark.parametrize(
    "data",
    [
        {"format": "text"},  # no paths
        {"format": "sft", "paths": ["a.jsonl"], "text_key": "body"},  # text_key only for text
        {"format": "indexed", "paths": ["p"], "split": "train"},  # split only for datasets sources
    ],
)
def test_inconsistent_data_sections_are_refused(data):
    with pytest.raises(SpecError):
        _train_args(data)


def test_validate_runs_the_runtime_checks_on_a_text_spec(tmp_path, capsys):
    spec = (
        (REPO / "jobspecs" / "cpu_tiny_pretrain.yaml")
        .read_text()
        .replace(
            "data: {format: mock}",
            'data: {format: text, paths: ["hf:OWNER/NAME"], text_key: body, split: "2024", subset: en, cache_dir: /c}',
        )
    )
    path = tmp_path / "text.yaml"
    path.write_text(spec)
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert main(["render", str(path), "--cluster", "slurm"]) == 0
    assert 'data.hf_split="2024"' in capsys.readouterr().out

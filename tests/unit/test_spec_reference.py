"""The spec's JSON schema describes every field, and docs/reference/spec.md is generated from it and up to date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gemma3_launch.spec import JobSpec

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
GENERATOR = REPO / "scripts" / "gen_spec_reference.py"


def _fields(schema: dict) -> list[tuple[str, dict]]:
    models = {"JobSpec": schema, **schema.get("$defs", {})}
    return [
        (f"{model}.{name}", prop)
        for model, body in models.items()
        if "properties" in body
        for name, prop in body["properties"].items()
    ]


def test_every_spec_field_has_a_description():
    fields = _fields(JobSpec.model_json_schema())
    missing = [name for name, prop in fields if not str(prop.get("description", "")).strip()]
    assert len(fields) > 60
    assert missing == [], f"fields without a description (Field(description=...)): {missing}"


def test_schema_command_prints_the_descriptions(capsys):
    import json

    from gemma3_launch.cli import main

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "sbatch" in schema["$defs"]["Resources"]["properties"]["time_limit"]["description"]


def test_field_reference_is_generated_from_the_schema_and_current():
    res = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert res.returncode == 0, res.stderr + "(regenerate: python scripts/gen_spec_reference.py)"
    page = (REPO / "docs" / "reference" / "spec.md").read_text(encoding="utf-8")
    for name, _prop in _fields(JobSpec.model_json_schema()):
        assert f".{name.split('.', 1)[1]}`" in page or f"`{name.split('.', 1)[1]}`" in page, name


def test_check_mode_fails_on_a_stale_page(tmp_path, monkeypatch):
    sys.path.insert(0, str(GENERATOR.parent))
    try:
        import gen_spec_reference as gen
    finally:
        sys.path.remove(str(GENERATOR.parent))
    stale = tmp_path / "spec.md"
    stale.write_text(gen.render(gen.current_schema()).replace("GPUs per node", "GPUs"), encoding="utf-8")
    monkeypatch.setattr(gen, "OUTPUT", stale)
    monkeypatch.setattr(gen, "REPO", tmp_path)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0

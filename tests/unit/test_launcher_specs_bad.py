"""The malformed-spec corpus (tests/unit/specs_bad/): every file makes `gemma3-launch submit` exit 2 with ONE line
on stderr that names the field path and what was expected, and nothing is submitted, written or registered.

Each file's header says what the line must contain (`# expect:`), optionally a hint (`# hint:`), the cluster
(`# cluster:`, default local) and extra CLI arguments (`# args:`).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from gemma3_launch.cli import main

pytestmark = pytest.mark.unit

CORPUS = sorted((Path(__file__).parent / "specs_bad").glob("*.yaml"))
SENTINEL = "SENTINEL"


def _header(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if not line.startswith("# "):
            break
        key, _, value = line[2:].partition(": ")
        out[key] = value
    return out


def test_corpus_is_big_enough():
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("spec", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_spec_exits_2_with_one_line(spec: Path, tmp_path, monkeypatch, capsys):
    header = _header(spec)
    assert "expect" in header, f"{spec.name}: corpus file needs an '# expect:' header"
    monkeypatch.chdir(tmp_path)  # ./runs and ./out would appear here if anything were written
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("HF_TOKEN", "hf_SENTINELsentinelSENTINELsentinel00")
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))  # no sbatch reachable: a submit attempt would fail with 1
    monkeypatch.delenv("GEMMA3_TEST_SURELY_UNSET_VAR", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    args = ["submit", str(spec), "--cluster", header.get("cluster", "local"), *shlex.split(header.get("args", ""))]

    rc = main(args)

    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if ": warning: " not in line]
    assert rc == 2, f"{spec.name}: exit {rc}, stderr {err}"
    assert len(err) == 1, f"{spec.name}: expected one line, got {err}"
    line = err[0]
    assert header["expect"] in line, f"{spec.name}: {line!r} does not name {header['expect']!r}"
    assert "expected" in line, f"{spec.name}: {line!r} does not say what was expected"
    if "hint" in header:
        assert header["hint"] in line
    assert SENTINEL not in line, f"{spec.name}: the error line echoes a secret value"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], (
        f"{spec.name}: something was written: {list(tmp_path.iterdir())}"
    )

"""The hostile-spec corpus (hostile_cases.py): every case makes `validate`, `render --cluster slurm` and
`submit --cluster local` exit 2 with exactly ONE stderr line that names the field and says what was expected - no
traceback, no credential echoed, nothing registered, nothing written. In-process through cli.main (fast); a few
cases also as real subprocesses of the console entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hostile_cases import CASES, Case, spec_text

from gemma3_launch.cli import main

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
HF_VALUE = "hf_SENTINELsentinelSENTINELsentinel00"
COMMANDS = (("validate",), ("render", "--cluster", "slurm"), ("submit", "--cluster", "local"))


def test_corpus_covers_every_class():
    assert len(CASES) >= 150, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
    prefixes = {c.id.split("-")[0] for c in CASES}
    assert {"dup", "control", "secret", "env", "time", "unknown", "type", "set", "kind", "tag", "depth"} <= prefixes


def _write_spec(case: Case, where: Path) -> Path:
    where.mkdir()
    path = where / "spec.yaml"
    text = spec_text(case)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # ./runs would appear here if anything were written
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("HF_TOKEN", HF_VALUE)
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))  # no scheduler reachable
    monkeypatch.delenv("GEMMA3_LAUNCH_TRACEBACK", raising=False)
    return tmp_path


def _assert_refused(case: Case, rc: int, err: str, sandbox: Path, command: str) -> None:
    lines = err.strip().splitlines()
    where = f"{case.id} ({command})"
    assert rc == 2, f"{where}: exit {rc}, stderr {lines}"
    assert len(lines) == 1, f"{where}: expected one stderr line, got {lines}"
    line = lines[0]
    assert case.expect in line, f"{where}: {line!r} does not name {case.expect!r}"
    assert "expected" in line, f"{where}: {line!r} does not say what was expected"
    assert "Traceback" not in err
    assert "SENTINEL" not in line
    if case.secret:
        assert case.secret not in line, f"{where}: the error line echoes a credential"
    assert line.isprintable(), f"{where}: the error line holds control characters: {line!r}"
    assert list((sandbox / "work").iterdir()) == [], f"{where}: something was written"
    assert not (sandbox / "state").exists(), f"{where}: something was registered"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_spec_is_refused_in_one_line(case: Case, sandbox, capsys):
    spec = _write_spec(case, sandbox / "in")
    for command in COMMANDS:
        sets = [a for s in case.sets for a in ("--set", s)]
        rc = main([command[0], str(spec), *command[1:], *sets])
        out, err = capsys.readouterr()
        _assert_refused(case, rc, err, sandbox, " ".join(command))
        assert command[0] != "render" or out == "", f"{case.id}: render printed a script for a refused spec"


SUBPROCESS_CASES = ("dup-gpus-per-node", "alias-bomb", "control-nl-runs_dir", "secret-name-hf", "time-zero-hms")


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_hostile_spec_refused_by_the_real_command(case_id, sandbox):
    case = next(c for c in CASES if c.id == case_id)
    spec = _write_spec(case, sandbox / "in")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "launcher"), str(REPO / "runtime")])}
    env["PATH"] = str(sandbox / "nobin")
    proc = subprocess.run(
        [sys.executable, "-m", "gemma3_launch.cli", "submit", str(spec), "--cluster", "local"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    _assert_refused(case, proc.returncode, proc.stderr, sandbox, "subprocess submit")

"""The job index heals itself: a corrupt or truncated index.sqlite, a garbage or wrong-typed job.json - each is
recovered with ONE warning, through the real CLI (`list`, `list --rebuild`, `status`), never a traceback."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gemma3_launch.cli import main
from gemma3_launch.registry import ROOTS_FILE, Registry

pytestmark = pytest.mark.unit


def _record(job_id: str, run_dir: Path, **extra) -> dict:
    return {
        "job_id": job_id,
        "name": "demo",
        "kind": "generate",
        "backend": "local",
        "backend_id": "123",
        "run_dir": str(run_dir),
        "state": "COMPLETED",
        "submitted_at": f"2026-01-01T00:00:{job_id[-2:]}+00:00",
        "states": [{"state": "COMPLETED", "at": "2026-01-01T00:00:00+00:00"}],
        **extra,
    }


@pytest.fixture
def state(tmp_path, monkeypatch):
    """A state dir whose index knows 40 finished jobs under one runs root."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("GEMMA3_LAUNCH_TRACEBACK", raising=False)
    root = tmp_path / "runs"
    reg = Registry()
    for i in range(40):
        run_dir = root / f"job-{i:02d}"
        run_dir.mkdir(parents=True)
        rec = _record(f"job-{'x' * 60}-{i:02d}", run_dir)
        (run_dir / "job.json").write_text(json.dumps(rec))
    assert reg.rebuild([str(root)]) == 40
    return reg, root


def _listed(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines()[1:]]


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning" in line]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "header-only"])
def test_a_corrupt_index_is_moved_aside_and_rebuilt(state, damage, capsys):
    reg, _ = state
    blob = reg.path.read_bytes()
    reg.path.write_bytes(
        {"garbage": b"this is not sqlite\n" * 200, "truncated": blob[: len(blob) // 2], "header-only": blob[:100]}[
            damage
        ]
    )
    assert main(["list"]) == 0
    out, err = capsys.readouterr()
    assert len(_listed(out)) == 40
    assert len(err.splitlines()) == 1 and "moved aside to index.sqlite.corrupt-" in err and "Traceback" not in err
    aside = list(reg.path.parent.glob("index.sqlite.corrupt-*"))
    assert len(aside) == 1
    assert main(["list"]) == 0  # healed: no further warning
    assert capsys.readouterr().err == ""


def test_a_corrupt_index_heals_for_status_and_on_write(state, capsys):
    reg, root = state
    reg.path.write_bytes(b"\0garbage" * 1000)
    assert main(["status", "job-xxxx"]) == 2  # a prefix of 40 jobs is ambiguous: an input error, after healing
    err = capsys.readouterr().err
    assert len(_warnings(err)) == 1 and "moved aside" in err and "Traceback" not in err
    reg.path.write_bytes(b"\0garbage" * 1000)
    run_dir = root / "job-new"
    run_dir.mkdir()
    reg.upsert(_record("job-new-99", run_dir))
    assert len(reg.all()) == 41  # rebuilt from the 40 run dirs (the new one has no job.json yet), then the upsert
    assert reg.get("job-new-99") is not None


@pytest.mark.parametrize(
    "content,problem",
    [
        ("{not json", "garbage or truncated"),
        ('{"job_id": "job-broken", "backend": "lo', "garbage or truncated"),
        ("", "garbage or truncated"),
        ("[1, 2, 3]", "expected a JSON object, got list"),
        ('{"job_id": 7, "backend": "local", "run_dir": "/x"}', "'job_id' to be str, got int"),
        ('{"job_id": "job-b", "backend": ["local"], "run_dir": "/x"}', "'backend' to be str, got list"),
        ('{"job_id": "job-b", "backend": "local", "run_dir": "/x", "states": "RUNNING"}', "'states' to be list"),
        ('{"job_id": "job-b", "backend": "local", "run_dir": "/x", "git": "abc"}', "'git' to be dict"),
        ('{"job_id": "job-b", "backend": "local"}', "'run_dir' (missing or empty)"),
        ('{"job_id": "job-b", "backend": "lsf", "run_dir": "/x"}', "'backend' to be one of local, slurm, k8s"),
    ],
    ids=[
        "garbage",
        "truncated",
        "empty",
        "list",
        "int-id",
        "list-backend",
        "str-states",
        "str-git",
        "no-run-dir",
        "unknown-backend",
    ],
)
def test_a_bad_job_json_is_skipped_with_one_warning_naming_it(state, content, problem, capsys):
    reg, root = state
    bad = root / "job-bad" / "job.json"
    bad.parent.mkdir()
    bad.write_text(content)
    assert main(["list", "--rebuild"]) == 0
    out, err = capsys.readouterr()
    assert len(_listed(out)) == 40
    warnings = _warnings(err)
    assert len(warnings) == 1 and str(bad) in warnings[0] and problem in warnings[0], warnings
    assert "Traceback" not in err


def test_status_logs_cancel_of_a_wrong_typed_record_are_one_line(state, capsys):
    reg, root = state
    run_dir = root / "job-05"
    rec = json.loads((run_dir / "job.json").read_text())
    rec["backend"] = {"name": "local"}
    (run_dir / "job.json").write_text(json.dumps(rec))
    for command in ("status", "logs", "cancel"):
        assert main([command, rec["job_id"]]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "job.json" in err and "'backend' to be str" in err, err
        assert "Traceback" not in err
    (run_dir / "job.json").write_text("{truncated")
    assert main(["status", rec["job_id"]]) == 2
    assert "garbage or truncated" in capsys.readouterr().err


def test_rebuild_swaps_a_new_index_in_and_the_old_one_serves_until_then(state):
    reg, root = state
    old = sqlite3.connect(reg.path)  # a reader holding the old index across the rebuild
    before = reg.path.stat().st_ino
    (root / "job-00" / "job.json").unlink()
    assert reg.rebuild() == 39
    assert reg.path.stat().st_ino != before  # a new file, renamed into place
    assert old.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 40  # the old one stayed whole
    old.close()
    assert len(reg.all()) == 39
    assert [p.name for p in reg.path.parent.iterdir() if ".new-" in p.name] == []


def test_the_runs_roots_survive_the_index(state, capsys):
    reg, root = state
    assert (reg.path.parent / ROOTS_FILE).read_text().splitlines() == [str(root)]
    reg.path.unlink()
    assert main(["list", "--rebuild"]) == 0
    out, err = capsys.readouterr()
    assert len(_listed(out)) == 40 and "40 job(s)" in err


def test_list_escapes_control_characters_from_a_job_json(state, capsys):
    reg, root = state
    run_dir = root / "job-evil"
    run_dir.mkdir()
    (run_dir / "job.json").write_text(json.dumps(_record("job-evil\x1b[2J-01", run_dir, kind="gen\nerate")))
    assert main(["list", "--rebuild"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "job-evil\\x1b[2J-01" in out and len(out.splitlines()) == 42


@pytest.mark.parametrize("job", ["\udcff", "job-\x1b[2J", "%", "_"])
def test_odd_job_ids_are_one_line_input_errors(state, job, capsys):
    assert main(["status", job]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "\x1b" not in err and "Traceback" not in err

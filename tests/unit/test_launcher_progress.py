"""`status` progress, `checkpoints` and `list` filters through the real CLI, over run dirs laid out as a job leaves
them (job.json, plan.json, the checkpoint dir's steps.jsonl, tracker and iter_NNNNNNN dirs) - including missing,
partial and garbage files, which must never produce a traceback."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gemma3_launch.backends.local import _starttime
from gemma3_launch.cli import JOB_KINDS, main
from gemma3_launch.progress import format_duration, format_size, job_progress, list_checkpoints, read_steps
from gemma3_launch.registry import JobFilter, Registry, parse_since

pytestmark = pytest.mark.unit

NOW = time.time()


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("GEMMA3_LAUNCH_TRACEBACK", raising=False)
    return tmp_path


def _train_job(root: Path, job_id: str, *, state: str = "COMPLETED", steps: list[dict] | None = None, **extra) -> dict:
    """A finished (or running) pretrain job's run dir with its record indexed; returns the record."""
    run_dir = root / "runs" / job_id
    save_dir = run_dir / "checkpoints"
    save_dir.mkdir(parents=True)
    args = ["run", "--recipe", "gemma3_tiny_pretrain", "--device", "cpu", "train.train_iters=100"]
    plan = {"steps": [{"name": "train", "args": args, "nnodes": 1, "nproc_per_node": 1}]}
    (run_dir / "plan.json").write_text(json.dumps(plan))
    rec = {
        "job_id": job_id,
        "name": job_id.rsplit("-", 1)[0],
        "kind": "pretrain",
        "backend": "local",
        "backend_id": "1",
        "run_dir": str(run_dir),
        "state": state,
        "submitted_at": _iso(NOW - 600),
        "states": [{"state": "SUBMITTED", "at": _iso(NOW - 600)}, {"state": "RUNNING", "at": _iso(NOW - 500)}],
        "outputs": {"checkpoint": str(save_dir)},
        **extra,
    }
    if state == "RUNNING":  # this test process stands in for the job's wrapper, so the local backend sees it alive
        rec["backend_id"] = f"{os.getpid()}:{_starttime(os.getpid())}"
    else:
        rec["states"].append({"state": state, "at": _iso(NOW - 100)})
        (run_dir / "state.json").write_text(json.dumps({"state": state, "exit_code": 0, "at": _iso(NOW - 100)}))
    (run_dir / "job.json").write_text(json.dumps(rec))
    lines = [json.dumps(s) for s in steps or []]
    (save_dir / "steps.jsonl").write_text("".join(line + "\n" for line in lines))
    Registry().upsert(rec)
    return rec


def _steps(n: int, start: float, step_s: float) -> list[dict]:
    return [{"iteration": i, "loss": 10.0 - i / 10, "lr": 1e-3, "time": start + i * step_s} for i in range(1, n + 1)]


def _commit(save_dir: Path, iteration: int, payload: int = 1000) -> None:
    d = save_dir / f"iter_{iteration:07d}"
    d.mkdir()
    (d / "shard.distcp").write_bytes(b"x" * payload)
    (save_dir / "latest_checkpointed_iteration.txt").write_text(str(iteration))


def test_status_json_of_a_running_job_shows_step_loss_tokens_per_s_and_eta(state, capsys):
    rec = _train_job(state, "pre-20260101-000000-aaaa", state="RUNNING", steps=_steps(40, NOW - 40, 1.0))
    _commit(Path(rec["outputs"]["checkpoint"]), 30)
    save_dir = Path(rec["outputs"]["checkpoint"])
    (save_dir / "wandb_run_id").write_text("abc123\n")
    for attempt in ("offline-run-20260101_000000-abc123", "offline-run-20260101_010000-abc123", "run-x-other"):
        (save_dir / "wandb" / attempt).mkdir(parents=True)
    progress = job_progress(rec, now=NOW)
    assert (progress.step, progress.total, progress.loss) == (40, 100, pytest.approx(6.0))
    assert progress.eta_s == pytest.approx(60.0, abs=0.2)  # 60 steps left at 1 step/s
    assert progress.tokens_per_s == pytest.approx(4 * 32, rel=0.01)  # 1 step/s x gbs 4 x seq 32 (the tiny recipe)
    assert progress.elapsed_s == pytest.approx(500, abs=1)
    assert progress.last_checkpoint["iteration"] == 30
    assert progress.wandb == {
        "id": "abc123",
        "mode": "offline",
        "dir": str(save_dir / "wandb" / "offline-run-20260101_010000-abc123"),
    }
    # a later look: the ETA went down
    with open(Path(rec["outputs"]["checkpoint"]) / "steps.jsonl", "a") as f:
        for s in _steps(60, NOW - 40, 1.0)[40:]:
            f.write(json.dumps(s) + "\n")
    assert job_progress(rec, now=NOW + 20).eta_s < progress.eta_s


def test_status_text_and_json_through_the_cli(state, capsys):
    rec = _train_job(state, "pre-20260101-000000-bbbb", steps=_steps(100, NOW - 200, 1.0))
    _commit(Path(rec["outputs"]["checkpoint"]), 100)
    assert main(["status", rec["job_id"]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == [rec["job_id"], "COMPLETED"]
    assert "step 100/100 (100%)" in out[1] and "loss 0.0000" in out[1] and "ETA" not in out[1]
    assert out[2].startswith("  checkpoint: iteration 100 (")
    assert main(["status", rec["job_id"], "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] == "COMPLETED" and doc["progress"]["step"] == 100 and doc["progress"]["eta_s"] is None
    assert doc["progress"]["elapsed_s"] == pytest.approx(400, abs=1)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage\n{not json\n",
        b'{"iteration": "7"}\n[1, 2]\n{"iteration": true}\n',
        b'{"iteration": 3, "loss": "NaN", "time": "x"}\n{"iteration": 4, "loss": 1e999',  # cut mid-line
        b"\xff\xfe\x00binary",
    ],
)
def test_garbage_steps_file_never_breaks_status(state, capsys, content):
    rec = _train_job(state, "pre-20260101-000000-cccc", state="RUNNING")
    save_dir = Path(rec["outputs"]["checkpoint"])
    (save_dir / "steps.jsonl").write_bytes(content)
    (save_dir / "latest_checkpointed_iteration.txt").write_text("not a number")
    (save_dir / "run_config.yaml").write_text(": : [")
    (save_dir / "wandb_run_id").write_text("../../not an id")
    assert main(["status", rec["job_id"], "--json"]) == 0
    progress = json.loads(capsys.readouterr().out)["progress"]
    assert progress["step"] in (None, 3) and progress["last_checkpoint"] is None and progress["wandb"] is None
    assert main(["status", rec["job_id"]]) == 0
    assert main(["checkpoints", rec["job_id"]]) == 0
    assert "no committed checkpoint" in capsys.readouterr().out


def test_missing_checkpoint_dir_and_plan(state, capsys):
    rec = _train_job(state, "pre-20260101-000000-dddd")
    for name in ("plan.json",):
        os.remove(Path(rec["run_dir"]) / name)
    save_dir = Path(rec["outputs"]["checkpoint"])
    for p in save_dir.iterdir():
        p.unlink()
    save_dir.rmdir()
    assert main(["status", rec["job_id"], "--json"]) == 0
    progress = json.loads(capsys.readouterr().out)["progress"]
    assert progress["step"] is None and progress["total"] is None
    assert main(["checkpoints", rec["job_id"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_total_from_run_config_when_the_runtime_cannot_resolve_the_plan(state):
    rec = _train_job(state, "pre-20260101-000000-eeee", state="RUNNING", steps=_steps(10, NOW - 10, 1.0))
    (Path(rec["run_dir"]) / "plan.json").write_text('{"steps": [{"args": ["run", "--recipe", "no_such"]}]}')
    save_dir = Path(rec["outputs"]["checkpoint"])
    (save_dir / "run_config.yaml").write_text("train: {train_iters: 20, global_batch_size: 2}\ndata: {seq_length: 8}\n")
    progress = job_progress(rec, now=NOW)
    assert progress.total == 20 and progress.eta_s == pytest.approx(10, abs=0.2) and progress.tokens_per_s == 16


def test_unreachable_k8s_run_dir_says_where_progress_lives(state, capsys):
    rec = {
        "job_id": "k-20260101-000000-ffff",
        "kind": "finetune",
        "backend": "k8s",
        "run_dir": "/nonexistent/pvc/runs/k-20260101-000000-ffff",
        "spec": {"k8s": {"namespace": "ml"}},
        "outputs": {"checkpoint": "/nonexistent/pvc/ck"},
    }
    note = job_progress(rec).note
    assert "not reachable from here" in note and "gemma3-launch logs k-20260101-000000-ffff" in note
    assert "namespace ml" in note and "/nonexistent/pvc/ck" in note


def test_k8s_job_whose_run_dir_is_here_but_checkpoints_are_on_the_volume(state):
    rec = _train_job(state, "k-20260101-000000-abcd", backend="k8s", outputs={"checkpoint": "/nonexistent/pvc/ck"})
    progress = job_progress(rec, now=NOW)
    assert "on the cluster's volume" in progress.note and progress.step is None
    assert progress.elapsed_s == pytest.approx(400, abs=1)  # the record itself is here


def test_checkpoints_lists_only_committed_iterations(state, capsys):
    rec = _train_job(state, "pre-20260101-000000-gggg", steps=_steps(30, NOW - 30, 1.0))
    save_dir = Path(rec["outputs"]["checkpoint"])
    _commit(save_dir, 10, payload=2048)
    _commit(save_dir, 20, payload=4096)
    (save_dir / "iter_0000030").mkdir()  # being written: past the tracker
    (save_dir / "iter_0000040.tmp-123").mkdir()  # a killed save's leftovers
    found = list_checkpoints(save_dir)
    assert [c.iteration for c in found] == [10, 20] and [c.size_bytes for c in found] == [2048, 4096]
    assert main(["checkpoints", rec["job_id"][:20], "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(c["iteration"], c["committed"]) for c in listed] == [(10, True), (20, True)]
    assert all(dt.datetime.fromisoformat(c["time"]).tzinfo for c in listed)
    assert main(["checkpoints", rec["job_id"]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["ITERATION", "SIZE"] and lines[2].split()[:3] == ["20", "4.0", "KiB"]


def test_checkpoints_of_a_job_without_checkpoints_is_an_input_error(state, capsys):
    rec = _train_job(state, "gen-20260101-000000-hhhh")
    rec = {**rec, "kind": "generate", "outputs": {}}
    (Path(rec["run_dir"]) / "job.json").write_text(json.dumps(rec))
    assert main(["checkpoints", rec["job_id"]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected a job that writes checkpoints" in err


def test_list_json_and_filters(state, capsys):
    a = _train_job(state, "alpha-20260101-000000-0001", state="FAILED")
    b = _train_job(state, "beta-20260101-000000-0002")
    old = _train_job(state, "alpha-20250101-000000-0003", submitted_at="2025-01-01T00:00:00+00:00")
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["job_id"] for r in rows} == {a["job_id"], b["job_id"], old["job_id"]}
    assert set(rows[0]) >= {"job_id", "name", "kind", "backend", "state", "submitted_at", "run_dir"}

    def ids(*argv: str) -> set[str]:
        assert main(["list", "--json", *argv]) == 0
        return {r["job_id"] for r in json.loads(capsys.readouterr().out)}

    assert ids("--state", "failed") == {a["job_id"]}
    assert ids("--state", "FAILED", "--state", "COMPLETED") == {a["job_id"], b["job_id"], old["job_id"]}
    assert ids("--kind", "generate") == set()
    assert ids("--kind", "pretrain", "--name", "alpha*") == {a["job_id"], old["job_id"]}
    assert ids("--name", "alpha-2025*") == {old["job_id"]}
    assert ids("--since", "2d") == {a["job_id"], b["job_id"]}
    assert ids("--since", "2025-06-01") == {a["job_id"], b["job_id"]}
    assert ids("--since", "2024-12-31T23:00:00Z") == {a["job_id"], b["job_id"], old["job_id"]}
    assert main(["list", "--state", "FAILED"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 and table[1].split()[0] == a["job_id"]


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--since", "yesterday"], "--since"),
        (["--since", "2h30m"], "--since"),
        (["--state", "DONE"], "--state"),
    ],
)
def test_bad_list_filters_are_one_line_input_errors(state, capsys, argv, field):
    assert main(["list", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {field}: expected" in err


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=30))
def test_parse_since_takes_ages_and_iso_dates_and_refuses_the_rest(text):
    try:
        at = parse_since(text, 1_000_000_000.0)
    except ValueError as exc:
        assert "expected an age" in str(exc)
    else:
        assert isinstance(at, float)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_read_steps_never_raises_on_any_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("steps") / "steps.jsonl"
    path.write_bytes(data)
    for rec in read_steps(path):
        assert isinstance(rec["iteration"], int)


def test_filter_and_formatters():
    assert JobFilter(name="a*").keeps({"name": "x", "job_id": "abc"})
    assert not JobFilter(since=10.0).keeps({"submitted_at": "garbage"})
    assert format_duration(3725) == "1h02m05s" and format_duration(59) == "0m59s" and format_duration(None) == "-"
    assert format_duration(2 * 86400 + 3600) == "2d01h00m"
    assert format_size(512) == "512 B" and format_size(3 * 2**30) == "3.0 GiB"


def test_cli_job_kinds_match_the_spec():
    from typing import get_args

    from gemma3_launch.spec import JobKind

    assert get_args(JobKind) == JOB_KINDS


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("gemma3-launch ") and out.split()[1][0].isdigit()


def test_version_imports_neither_torch_nor_pydantic():
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo / "launcher"))
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gemma3_launch.cli", "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 0 and res.stdout.startswith("gemma3-launch ")
    imported = {line.split("|")[-1].strip().split(".")[0] for line in res.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "pydantic", "numpy", "gemma3_runtime"}

"""The job wrapper under killed processes, with plain shell steps (fast): a killed training step is retried inside
the job up to resources.max_step_retries with its cause recorded; an error of the step's own is not retried; a step
that completed is never re-run when the job runs again (requeue or `retry`)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gemma3_launch.jobwrap import failure_cause
from gemma3_launch.plan import Cluster, Step, make_plan
from gemma3_launch.record import write_json_atomic

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _run_dir(tmp_path: Path, steps: list[Step], retries: int) -> Path:
    from gemma3_launch.spec import JobSpec

    spec = JobSpec.model_validate(
        {
            "name": "t",
            "kind": "pretrain",
            "recipe": "gemma3_tiny_pretrain",
            "data": {"format": "mock"},
            "checkpoint": {"dir": str(tmp_path / "ck")},
            "resources": {"max_step_retries": retries},
        }
    )
    plan = make_plan(spec, Cluster("local"))
    plan = dataclasses.replace(
        plan, steps=tuple(steps), resources=dataclasses.replace(plan.resources, max_step_retries=retries)
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_json_atomic(run_dir / "plan.json", plan.to_dict())
    write_json_atomic(run_dir / "job.json", {"job_id": "t", "run_dir": str(run_dir), "states": []})
    return run_dir


def _job(run_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PYTHONPATH"] = f"{REPO / 'launcher'}"
    return subprocess.run(
        [sys.executable, "-m", "gemma3_launch.jobwrap", "job", str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _sh(name: str, script: str, preemptible: bool = True) -> Step:
    return Step(name, ("run",), preemptible=preemptible, command=("sh", "-c", script))


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "job.json").read_text())


def test_a_killed_step_is_retried_inside_the_job_with_its_cause(tmp_path):
    tries = tmp_path / "tries"
    # SIGKILLs itself on its first two tries, then succeeds
    script = f"echo x >> {tries}; [ $(wc -l < {tries}) -ge 3 ] || kill -9 $$"
    run_dir = _run_dir(tmp_path, [_sh("train", script)], retries=2)
    res = _job(run_dir)
    assert res.returncode == 0, res.stdout + res.stderr
    rec = _record(run_dir)
    assert rec["step_retries"] == 2 and rec["state"] == "COMPLETED"
    assert [(f["signal"], f["retried"]) for f in rec["step_failures"]] == [("SIGKILL", True), ("SIGKILL", True)]
    assert "retry 2/2 from the last committed checkpoint" in res.stdout


def test_retries_are_bounded_and_an_own_error_is_not_retried(tmp_path):
    run_dir = _run_dir(tmp_path, [_sh("train", "kill -9 $$")], retries=1)
    assert _job(run_dir).returncode != 0
    rec = _record(run_dir)
    assert [f["retried"] for f in rec["step_failures"]] == [True, False] and rec["state"] == "FAILED"

    other = tmp_path / "own"
    other.mkdir()
    run_dir = _run_dir(other, [_sh("train", "exit 3")], retries=2)
    assert _job(run_dir).returncode == 3
    assert [f["retried"] for f in _record(run_dir)["step_failures"]] == [False]


def test_a_step_that_completed_is_never_rerun(tmp_path):
    ran, fixed = tmp_path / "ran", tmp_path / "fixed"
    steps = [
        _sh("import", f"echo import >> {ran}", preemptible=False),
        _sh("train", f"echo train >> {ran}; [ -e {fixed} ] || exit 3"),
    ]
    run_dir = _run_dir(tmp_path, steps, retries=0)
    assert _job(run_dir).returncode == 3
    fixed.touch()
    again = _job(run_dir)  # what a requeue or `gemma3-launch retry` runs: the same plan in the same run dir
    assert again.returncode == 0, again.stdout
    assert ran.read_text().split() == ["import", "train", "train"]
    assert "step import: already done" in again.stdout


@pytest.mark.parametrize(
    ("rc", "records", "killed", "signal_name"),
    [
        (-9, [], True, "SIGKILL"),
        (137, [], True, "SIGKILL"),
        (1, [{"rank": "0", "exit_code": 1}], True, None),  # rank 1 left no record: killed
        (1, [{"rank": "0", "exit_code": 1}, {"rank": "1", "exit_code": 1}], False, None),
    ],
)
def test_failure_cause_tells_a_kill_from_an_error(tmp_path, monkeypatch, rc, records, killed, signal_name):
    from gemma3_launch.jobwrap_io import exit_dir

    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    step = Step("train", (), nnodes=2, nproc_per_node=1, preemptible=True)
    out = exit_dir(tmp_path, step)
    out.mkdir(parents=True)
    for r in records:
        write_json_atomic(out / f"rank-{r['rank']}.json", r)
    cause = failure_cause(tmp_path, step, rc)
    assert (cause["killed"], cause["signal"]) == (killed, signal_name), cause

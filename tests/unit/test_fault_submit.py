"""`gemma3-launch submit` SIGKILLed at each of its phases (a real kill of a real process, through the test-only
kill points of tests/fault_hooks): afterwards the registry holds a registered job or nothing, never a half record;
`list` and `list --rebuild` agree; `status` understands the job; nothing temporary is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gemma3_launch.submit import SUBMIT_PHASES

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
#: phases after which the job is on the scheduler (here: the local backend has started its wrapper)
STARTED = SUBMIT_PHASES[SUBMIT_PHASES.index("scheduler_submitted") :]
VISIBLE = SUBMIT_PHASES[SUBMIT_PHASES.index("run_dir_committed") :]


def _launcher(tmp_path: Path, kill_at: str | None = None):
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"), CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "tests" / "fault_hooks"), str(REPO / "launcher"), str(REPO / "runtime")]
    )
    if kill_at:
        env["GEMMA3_TEST_KILL_AT"] = kill_at
    return lambda *args: subprocess.run(
        [sys.executable, "-m", "gemma3_launch.cli", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _rows(res: subprocess.CompletedProcess) -> list[dict]:
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _wait_for_job_end(runs: Path) -> None:
    """The local job the killed submit started runs on; let it finish so both listings see the same final state."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all((d / "state.json").exists() for d in runs.iterdir()):
            return
        time.sleep(0.5)
    raise AssertionError(f"the job in {runs} did not end within 120 s")


@pytest.mark.slow
@pytest.mark.parametrize("phase", SUBMIT_PHASES)
def test_submit_killed_at_each_phase_leaves_a_registered_job_or_nothing(tmp_path, phase):
    runs = tmp_path / "runs"
    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"name: killed\nruns_dir: {runs}\nkind: import\nmodel: /nonexistent/model\ncheckpoint: {{dir: ./ck}}\n"
    )
    killed = _launcher(tmp_path, f"gemma3_launch.submit:_reached:1:after:{phase}")("submit", str(spec))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "fault_hooks: SIGKILL" in killed.stderr

    launch = _launcher(tmp_path)
    if phase in STARTED:
        _wait_for_job_end(runs)
    listed = _rows(launch("list", "--json"))
    assert not (tmp_path / "state" / "gemma3-launch" / "submitting").exists() or not any(
        (tmp_path / "state" / "gemma3-launch" / "submitting").iterdir()
    ), "the killed submit's intent was not settled"
    rebuilt = _rows(launch("list", "--rebuild", "--runs-dir", str(runs), "--json"))
    assert listed == rebuilt
    leftovers = sorted(p.name for p in runs.iterdir()) if runs.exists() else []
    assert not [n for n in leftovers if n.startswith(".")], f"temporary run dirs left: {leftovers}"

    if phase not in VISIBLE:
        assert listed == [] and leftovers == []
        return
    assert len(listed) == 1 and len(leftovers) == 1
    row = listed[0]
    record = json.loads((runs / leftovers[0] / "job.json").read_text())
    assert record["job_id"] == row["job_id"] and record["state"] == row["state"]
    # when the job ran, it failed on its bad input; when the kill came before the scheduler had it, the record says
    # SUBMIT_INTERRUPTED and refreshing asks the scheduler, which knows no such job: FAILED
    assert row["state"] == "FAILED", row
    assert ("SUBMIT_INTERRUPTED" in [s["state"] for s in record["states"]]) == (phase not in STARTED)
    status = launch("status", row["job_id"])
    assert status.returncode == 0 and row["state"] in status.stdout, status.stdout + status.stderr


def test_settling_intents_is_safe_with_garbage_live_and_hostile_intents(tmp_path):
    from gemma3_launch.registry import Registry

    warnings: list[str] = []
    reg = Registry(tmp_path / "state" / "index.sqlite", warn=warnings.append)
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "keep.txt").write_text("x")
    reg.intents_dir.mkdir(parents=True)
    (reg.intents_dir / "garbage.json").write_text("{not json")
    hostile = {"job_id": "j1", "run_dir": str(tmp_path / "runs" / "j1"), "tmp_dir": str(victim), "pid": 1 << 30}
    (reg.intents_dir / "j1.json").write_text(json.dumps({**hostile, "host": os.uname().nodename}))
    reg.begin_submit("j2", tmp_path / "runs" / "j2", tmp_path / "runs" / ".j2.tmp-1")  # this process: alive
    assert reg.all() == []
    assert (victim / "keep.txt").exists()  # only a run dir's own `.NAME.tmp-PID` sibling is ever removed
    assert sorted(p.name for p in reg.intents_dir.iterdir()) == ["j2.json"]  # the live submit's intent stays
    reg.end_submit("j2")
    assert list(reg.intents_dir.iterdir()) == [] and warnings == []


def test_rebuild_never_indexes_a_run_dir_still_under_its_temporary_name(tmp_path):
    from gemma3_launch.record import write_json_atomic
    from gemma3_launch.registry import Registry

    reg = Registry(tmp_path / "state" / "index.sqlite", warn=lambda message: None)
    runs = tmp_path / "runs"
    record = {"job_id": "j1", "backend": "local", "run_dir": str(runs / "j1"), "states": []}
    (runs / ".j1.tmp-7").mkdir(parents=True)
    write_json_atomic(runs / ".j1.tmp-7" / "job.json", record)  # a submit killed before its rename
    assert reg.rebuild([str(runs)]) == 0 and reg.all() == []
    (runs / ".j1.tmp-7").rename(runs / "j1")
    assert reg.rebuild([str(runs)]) == 1 and [r["job_id"] for r in reg.all()] == ["j1"]

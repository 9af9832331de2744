"""`status --json` of a RUNNING local job (a real tiny CPU pretrain through the job wrapper and the runtime) shows
step, loss, tokens/s and an ETA that decreases; after it ends, the same command shows the finished run and
`checkpoints` its committed iterations. Marked slow: it runs a real 150-step job. On an idle CPU the tiny model runs
~17 steps a second once warm, so the job is long enough, and the polls frequent enough, for several readings while
it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "jobspecs" / "cpu_tiny_pretrain.yaml"
ITERS = 150
SAVE_INTERVAL = 50


def test_status_json_of_a_running_job_shows_a_decreasing_eta(tmp_path):
    env = dict(
        os.environ,
        XDG_STATE_HOME=str(tmp_path / "state"),
        RUNS_ROOT=str(tmp_path / "runs"),
        PYTHONPATH=f"{REPO / 'launcher'}:{REPO / 'runtime'}",
        CUDA_VISIBLE_DEVICES="",
    )

    def launch(*args: str) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [sys.executable, "-m", "gemma3_launch.cli", *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert res.returncode == 0, res.stderr
        return res

    sets = ["--set", f"overrides+=train.train_iters={ITERS}"]
    sets += ["--set", f"overrides+=checkpoint.save_interval={SAVE_INTERVAL}"]
    job_id = launch("submit", str(SPEC), "--cluster", "local", *sets).stdout.split()[1]
    seen: list[dict] = []
    deadline = time.time() + 400
    while time.time() < deadline:
        doc = json.loads(launch("status", job_id, "--json").stdout)
        if doc["state"] != "RUNNING":
            break
        if doc["progress"]["step"] is not None:
            seen.append(doc["progress"])
        time.sleep(0.5)
    else:
        launch("cancel", job_id)
        pytest.fail(f"the job did not finish in 400 s: {seen[-1:] or 'no progress seen'}")
    assert doc["state"] == "COMPLETED", doc["states"]
    running = [p for p in seen if p["step"] < ITERS and p["eta_s"] is not None]
    assert len(running) >= 2, f"fewer than 2 progress readings while running: {seen}"
    first, last = running[0], running[-1]
    assert first["total"] == ITERS and last["step"] > first["step"]
    assert isinstance(last["loss"], float) and last["tokens_per_s"] > 0
    assert last["eta_s"] < first["eta_s"], [(p["step"], p["eta_s"]) for p in running]
    final = json.loads(launch("status", job_id, "--json").stdout)["progress"]
    assert final["step"] == ITERS and final["eta_s"] is None and final["last_checkpoint"]["iteration"] == ITERS
    listed = json.loads(launch("checkpoints", job_id, "--json").stdout)
    assert [c["iteration"] for c in listed] == [50, 100, 150] and all(c["size_bytes"] > 0 for c in listed)

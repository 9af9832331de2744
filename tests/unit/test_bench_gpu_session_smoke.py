"""The device-session scripts run on CPU as they will on the GPU: each builds its Trainers through
bench/train_throughput.run_config, so a change of that function's signature breaks them here, in CI, instead of in a
device call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SESSION = REPO / "bench" / "gpu_session"


def _run(script: str, args: list[str], out: Path) -> dict:
    env = {"PYTHONPATH": f"{REPO / 'runtime'}:{REPO / 'launcher'}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SESSION / script), "--device", "cpu", "--tiny", *args, "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def test_async_save_smoke_times_a_blocking_and_a_background_save(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    args = ["--seq", "32", "--mbs", "1", "--nmb", "2", "--steps", "2", "--async-saves", "1", "--workdir", str(work)]
    result = _run("async_save.py", args, tmp_path / "async.json")
    assert result["step_s_no_save"] > 0 and result["sync_blocked_s"] > 0
    (save,) = result["async"]
    assert save["blocked_s"] >= 0 and save["checkpoint_mb"] > 0 and save["committed_after_s"] >= 0
    assert list(work.iterdir()) == [], "the script deletes every checkpoint it wrote"


def test_fp8_loss_smoke_compares_emulated_float8_with_bf16_per_step(tmp_path: Path) -> None:
    result = _run("fp8_loss.py", ["--emulate", "--steps", "3", "--seq", "32"], tmp_path / "fp8.json")
    text = json.dumps(result)
    assert '"fp8_linears": 16' in text and "max_rel_loss_diff" in text, text[:2000]

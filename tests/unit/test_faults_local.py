"""Killed processes on the local backend: a worker rank or torchrun SIGKILLed mid-training is retried inside the
job (resources.max_step_retries) from the last committed checkpoint; the cause is in job.json and `status` says it;
the final weights equal an uninterrupted run's. Faults come from tests/faults.py's hook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import HOOK_DIR, faults_env, fired, print_schedule

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ITERS, SAVE_INTERVAL = 8, 2


def _launch(root: Path, *args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        XDG_STATE_HOME=str(root / "state"),
        PYTHONPATH=f"{HOOK_DIR}:{REPO / 'launcher'}:{REPO / 'runtime'}",
        **(extra_env or {}),
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(
        [sys.executable, "-m", "gemma3_launch.cli", *args],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _spec(root: Path, tag: str) -> str:
    path = root / f"{tag}.yaml"
    path.write_text(
        f"name: faults-{tag}\nkind: pretrain\nrecipe: gemma3_tiny_pretrain\nruns_dir: {root}/runs\n"
        f"overrides: [train.train_iters={ITERS}, train.global_batch_size=4, train.micro_batch_size=2,"
        f" checkpoint.save_interval={SAVE_INTERVAL}, logging.log_interval=1, eval.interval=null]\n"
        f"data: {{format: mock}}\ncheckpoint: {{dir: {root}/ckpt/{tag}}}\n"
        "resources: {nodes: 1, nproc_per_node: 2, cpus_per_task: 2, max_step_retries: 2}\n"
    )
    return str(path)


def _final_state(ckpt: Path) -> dict:
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    iteration = int((ckpt / "latest_checkpointed_iteration.txt").read_text())
    assert iteration == ITERS
    out = ckpt.parent / f"{ckpt.name}.final.pt"
    dcp_to_torch_save(str(ckpt / f"iter_{iteration:07d}"), str(out))
    sd = torch.load(out, weights_only=False)
    flat: dict = {}

    def walk(prefix: str, obj: object) -> None:
        if isinstance(obj, torch.Tensor):
            flat[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}", v)

    walk("", sd)
    return {k: v for k, v in flat.items() if "_extra_state" not in k}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run's final weights and optimizer state."""
    root = tmp_path_factory.mktemp("reference")
    ref = _launch(root, "submit", _spec(root, "reference"), "--follow")
    assert ref.returncode == 0, ref.stdout[-3000:]
    return _final_state(root / "ckpt" / "reference")


def _assert_equal_state(reference: dict, ckpt: Path) -> None:
    import torch

    state = _final_state(ckpt)
    assert state.keys() == reference.keys() and any("optimizer" in k for k in state), sorted(state)[:20]
    differing = [k for k in reference if not torch.equal(reference[k], state[k])]
    assert not differing, f"state differs from the uninterrupted run's: {differing[:5]}"


def test_killed_rank_and_torchrun_are_retried_inside_the_job(tmp_path, reference):
    schedule = [
        {"id": 0, "target": "rank", "rank": 1, "iteration": 3},
        {"id": 1, "target": "torchrun", "rank": 0, "iteration": 6},
    ]
    print_schedule(schedule)
    state = tmp_path / "faults"
    res = _launch(tmp_path, "submit", _spec(tmp_path, "killed"), "--follow", extra_env=faults_env(schedule, state))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert [f["id"] for f in fired(state)] == [0, 1]
    run_dir = next((tmp_path / "runs").glob("faults-killed*"))
    rec = json.loads((run_dir / "job.json").read_text())
    assert rec["state"] == "COMPLETED" and rec["step_retries"] == 2
    causes = rec["step_failures"]
    assert [c["retried"] for c in causes] == [True, True]
    assert causes[0]["killed_ranks"] == [1], causes[0]
    assert "retry 1/2 from the last committed checkpoint" in res.stdout
    # steps re-done per kill <= the save interval: each retry resumes from the newest checkpoint before the kill
    assert "resuming from" in res.stdout
    status = _launch(tmp_path, "status", rec["job_id"])
    assert "retries 2" in status.stdout, status.stdout

    _assert_equal_state(reference, tmp_path / "ckpt" / "killed")


def test_killed_job_wrapper_ends_the_job_and_retry_continues_it(tmp_path, reference):
    """The job wrapper SIGKILLed: its step dies with it (no orphan trains on), status says FAILED and why, and
    `retry` continues in the same run dir from the last committed checkpoint to the uninterrupted run's state."""
    schedule = [{"id": 0, "target": "wrapper", "rank": 0, "iteration": 5}]
    print_schedule(schedule)
    state = tmp_path / "faults"
    env = faults_env(schedule, state)
    res = _launch(tmp_path, "submit", _spec(tmp_path, "wrapper"), "--follow", extra_env=env)
    assert [f["id"] for f in fired(state)] == [0], res.stdout[-3000:]
    run_dir = next((tmp_path / "runs").glob("faults-wrapper*"))
    job_id = json.loads((run_dir / "job.json").read_text())["job_id"]
    status = _launch(tmp_path, "status", job_id)
    assert "FAILED" in status.stdout and "job wrapper or batch step killed" in status.stdout, status.stdout
    assert (tmp_path / "ckpt" / "wrapper" / "latest_checkpointed_iteration.txt").read_text().strip() == "4"

    again = _launch(tmp_path, "retry", job_id, extra_env=env)
    assert again.returncode == 0 and f"retried {job_id} (FAILED)" in again.stdout, again.stdout + again.stderr
    deadline = time.time() + 300
    while "COMPLETED" not in (status := _launch(tmp_path, "status", job_id)).stdout:
        assert time.time() < deadline and ("RUNNING" in status.stdout or "PENDING" in status.stdout), status.stdout
        time.sleep(2)
    rec = json.loads((run_dir / "job.json").read_text())
    assert len(rec["retried_from"]) == 1 and "resumed at iteration 4" in (run_dir / "job.log").read_text()
    _assert_equal_state(reference, tmp_path / "ckpt" / "wrapper")

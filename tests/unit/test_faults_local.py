"""Killed processes on the local backend: a worker rank or torchrun SIGKILLed mid-training is retried inside the
job (resources.max_step_retries) from the last committed checkpoint; the cause is in job.json and `status` says it;
a killed job wrapper ends the job, and `retry` (after ending what is left of its session) continues it; the final
weights and optimizer state equal an uninterrupted run's. Faults come from tests/faults.py's hook. One faulted job
carries every kill: the runs are what costs time here, not the checks."""

from __future__ import annotations

import json
import os
import re
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


def _runs(pid_and_start: list) -> bool:
    """Process [pid, start ticks] still runs (a zombie waiting for its new parent to reap it does not)."""
    try:
        fields = Path(f"/proc/{pid_and_start[0]}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == pid_and_start[1] and fields[0] != "Z"


def test_killed_processes_are_retried_in_the_job_then_by_retry_to_the_uninterrupted_state(tmp_path, reference):
    """One job takes three SIGKILLs: a rank and torchrun, each retried INSIDE the job from the last committed
    checkpoint (cause in job.json, `status` says it); then the job wrapper, leaving a stray process of the job
    behind (as a data-loader worker can): status says FAILED and why, `retry` ends what is left of the first
    attempt's session and continues in the same run dir to the uninterrupted run's weights and optimizer state."""
    from gemma3_launch.backends.local import job_processes

    schedule = [
        {"id": 0, "target": "rank", "rank": 1, "iteration": 3},
        {"id": 1, "target": "torchrun", "rank": 0, "iteration": 5},
        {"id": 2, "target": "wrapper", "rank": 0, "iteration": 7, "stray": True},
    ]
    print_schedule(schedule)
    state = tmp_path / "faults"
    env = faults_env(schedule, state)
    res = _launch(tmp_path, "submit", _spec(tmp_path, "killed"), "--follow", extra_env=env)
    assert [f["id"] for f in fired(state)] == [0, 1, 2], res.stdout[-4000:] + res.stderr[-2000:]
    run_dir = next((tmp_path / "runs").glob("faults-killed*"))
    rec = json.loads((run_dir / "job.json").read_text())
    assert rec["step_retries"] == 2
    causes = rec["step_failures"]
    assert [c["retried"] for c in causes] == [True, True]
    assert 1 in causes[0]["killed_ranks"], causes[0]  # rank 0 may go down with it before it records its exit
    assert "retry 1/2 from the last committed checkpoint" in res.stdout
    # steps re-done per kill <= the save interval: each retry resumes from the newest checkpoint before the kill
    resumed = re.findall(r"resumed at iteration (\d+)", (run_dir / "job.log").read_text())
    assert sorted({int(i) for i in resumed}) == [2, 4], resumed
    first_wrapper = rec["backend_id"]
    stray = fired(state)[2]["stray"]

    status = _launch(tmp_path, "status", rec["job_id"])
    assert "FAILED" in status.stdout and "job wrapper or batch step killed" in status.stdout, status.stdout
    assert "retries 2" in status.stdout, status.stdout
    assert (tmp_path / "ckpt" / "killed" / "latest_checkpointed_iteration.txt").read_text().strip() == "6"

    again = _launch(tmp_path, "retry", rec["job_id"], extra_env=env)
    assert again.returncode == 0 and f"retried {rec['job_id']} (FAILED)" in again.stdout, again.stdout + again.stderr
    assert not _runs(stray) and job_processes(first_wrapper) == []  # nothing of the first attempt runs on
    deadline = time.time() + 300
    while "COMPLETED" not in (status := _launch(tmp_path, "status", rec["job_id"])).stdout:
        assert time.time() < deadline and ("RUNNING" in status.stdout or "PENDING" in status.stdout), status.stdout
        time.sleep(2)
    rec = json.loads((run_dir / "job.json").read_text())
    assert len(rec["retried_from"]) == 1 and "resumed at iteration 6" in (run_dir / "job.log").read_text()
    _assert_equal_state(reference, tmp_path / "ckpt" / "killed")

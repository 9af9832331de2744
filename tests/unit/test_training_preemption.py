"""Preemption and crashes with real `gemma3-runtime run` processes (tiny model, CPU):
- SIGTERM mid-run: the step finishes, a checkpoint is committed, the exit code is REQUEUE_EXIT_CODE, and the next
  start resumes to the same final weights (and per-step losses) as an uninterrupted run;
- SIGKILL while a checkpoint is being written: the previous checkpoint stays the committed one and resumes exactly,
  and the resumed run's first save removes the killed writer's temp dir.
"""

import os
import signal
import subprocess
import time

import pytest
from train_helpers import (
    REPO,
    assert_same_tensors,
    checkpoint_tensors,
    run_cli_args,
    run_subprocess,
    runtime_env,
    step_losses,
)

from gemma3_launch.contract import REQUEUE_EXIT_CODE

pytestmark = [pytest.mark.unit, pytest.mark.slow]

ITERS = 6
EXTRA = ["checkpoint.save_interval=2"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    save = tmp_path_factory.mktemp("reference") / "run"
    proc = run_subprocess(run_cli_args(save, ITERS, EXTRA))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return save


def _start(save, log):
    """Own session, so a SIGKILL can take the whole process tree (as a node or container kill does)."""
    return subprocess.Popen(
        run_cli_args(save, ITERS, EXTRA),
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        text=True,
        env=runtime_env(),
        cwd=str(REPO),
        start_new_session=True,
    )


def _wait_for(predicate, proc, timeout=300, poll=0.005):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def _lines(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigterm_saves_exits_for_requeue_and_resumes_exactly(tmp_path, reference):
    from gemma3_runtime.checkpoint.layout import read_tracker

    save, log = tmp_path / "run", tmp_path / "log.txt"
    proc = _start(save, log)
    assert _wait_for(lambda: _lines(save / "steps.jsonl") >= 3, proc), log.read_text()[-3000:]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    output = log.read_text()
    assert proc.returncode == REQUEUE_EXIT_CODE, output[-3000:]
    assert "received SIGTERM" in output and "exiting for requeue" in output
    stopped_at = read_tracker(save)
    assert 3 <= stopped_at < ITERS
    assert stopped_at == _lines(save / "steps.jsonl")  # saved right after the step it was in

    resumed = run_subprocess(run_cli_args(save, ITERS, EXTRA))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed at iteration {stopped_at}" in resumed.stdout
    assert step_losses(save) == step_losses(reference)
    assert_same_tensors(checkpoint_tensors(save), checkpoint_tensors(reference))


def test_sigkill_during_checkpoint_write_keeps_the_previous_one(tmp_path, reference):
    from gemma3_runtime.checkpoint.layout import read_tracker, resolve_checkpoint

    save, log = tmp_path / "run", tmp_path / "log.txt"
    proc = _start(save, log)

    def writing_iter_4():
        return save.is_dir() and any(p.name.startswith("iter_0000004.tmp-") for p in save.iterdir())

    assert _wait_for(writing_iter_4, proc), log.read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its checkpoint-writer helper processes
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert read_tracker(save) == 2
    assert resolve_checkpoint(save).iter_dir.name == "iter_0000002"
    assert not (save / "iter_0000004").exists()
    leftovers = [p.name for p in save.iterdir() if ".tmp-" in p.name and p.is_dir()]
    assert leftovers and all(name.startswith("iter_0000004.tmp-") for name in leftovers)

    time.sleep(0.1)  # the process start time is known to a clock tick (10 ms); a temp dir written after it is kept
    resumed = run_subprocess(run_cli_args(save, ITERS, EXTRA))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed at iteration 2" in resumed.stdout
    output = resumed.stdout + resumed.stderr
    assert all(f"removed stale temporary checkpoint directory {save / name}" in output for name in leftovers), output
    assert [p.name for p in save.iterdir() if ".tmp-" in p.name and p.is_dir()] == []
    assert step_losses(save) == step_losses(reference)
    assert_same_tensors(checkpoint_tensors(save), checkpoint_tensors(reference))

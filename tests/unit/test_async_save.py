"""checkpoint.async_save with real megatron-core on CPU (tiny model), against a run that saves synchronously:
- a run with background saves, stopped (train.exit_interval) and resumed, ends at weights, optimizer state and
  per-step losses equal to the synchronous run's;
- the whole run SIGKILLed inside the background write of its 2nd save (tests/fault_hooks, process-group kill: the
  trainer and its writer child die together, as on a lost node), before or after the shards are written: the
  tracker names the 1st save, which loads, nothing partial carries a final name, and the same command resumes exactly;
- SIGUSR2 while a save is in flight: the run waits for that save, commits it, saves the step it stopped after and
  ends "preempted" (the CLI's exit 199), and the resumed run ends exactly where the synchronous one does;
- the config switch is a boolean, validated before anything is built.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from procs import run_in_own_group
from train_helpers import (
    assert_disk_full_keeps_iteration_2,
    assert_same_tensors,
    checkpoint_tensors,
    run_cli_args,
    runtime_env,
    step_losses,
    tiny_pretrain_cfg,
)

from gemma3_runtime.checkpoint.layout import read_tracker, resolve_checkpoint

pytestmark = [pytest.mark.unit, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ITERS = 6
SAVES = ["checkpoint.save_interval=2"]
ASYNC = [*SAVES, "checkpoint.async_save=true"]


def _run(save: Path, extra: list[str], kill_at: str | None = None):
    env = runtime_env()
    if kill_at:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "fault_hooks"), env["PYTHONPATH"]])
        env["GEMMA3_TEST_KILL_AT"] = kill_at
        env["GEMMA3_TEST_KILL_GROUP"] = "1"
    return run_in_own_group(run_cli_args(save, ITERS, extra), env, str(REPO), timeout=600)


@pytest.fixture(scope="module")
def synchronous(tmp_path_factory):
    save = tmp_path_factory.mktemp("sync") / "ck"
    res = _run(save, SAVES)
    assert res.returncode == 0, res.stderr[-3000:]
    return save


def test_async_saves_stop_and_resume_exactly(tmp_path, synchronous):
    save = tmp_path / "ck"
    stopped = _run(save, [*ASYNC, "train.exit_interval=4"])
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    output = stopped.stdout + stopped.stderr
    assert "write goes on in the background" in output and "committed" in output and read_tracker(save) == 4
    resumed = _run(save, ASYNC)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at iteration 4" in resumed.stderr + resumed.stdout
    assert read_tracker(save) == ITERS
    assert sorted(p.name for p in save.iterdir() if p.name.startswith("iter_")) == [f"iter_{i:07d}" for i in (2, 4, 6)]
    assert step_losses(save) == step_losses(synchronous)
    assert_same_tensors(checkpoint_tensors(save), checkpoint_tensors(synchronous))


@pytest.mark.parametrize("when", ["before", "after"])
def test_kill_during_the_background_write_keeps_the_previous_checkpoint(tmp_path, synchronous, when):
    save = tmp_path / "ck"
    killed = _run(save, ASYNC, kill_at=f"gemma3_runtime.checkpoint.async_save:_write_shards:1:{when}:iter_0000004")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "fault_hooks: SIGKILL" in killed.stderr
    assert read_tracker(save) == 2
    assert resolve_checkpoint(save).iter_dir.name == "iter_0000002" and checkpoint_tensors(save)
    finals = sorted(p.name for p in save.iterdir() if p.name.startswith("iter_") and ".tmp-" not in p.name)
    assert finals == ["iter_0000002"], finals
    assert [p.name for p in save.iterdir() if ".tmp-" in p.name][0].startswith("iter_0000004.tmp-")

    time.sleep(0.1)  # the process start time is known to a clock tick; a temp dir written after it is kept
    resumed = _run(save, ASYNC)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at iteration 2" in resumed.stderr + resumed.stdout
    assert read_tracker(save) == ITERS
    assert [p.name for p in save.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []
    assert step_losses(save) == step_losses(synchronous)
    assert_same_tensors(checkpoint_tensors(save), checkpoint_tensors(synchronous))


def test_usr2_during_a_background_save_waits_for_it_then_saves_and_stops(tmp_path, synchronous, monkeypatch):
    """In-process: the background write is slowed (2 s, in the forked writer) and SIGUSR2 arrives right after the
    step that follows the save of iteration 2, so the stop is agreed while that save is still being written."""
    from gemma3_runtime.checkpoint import async_save
    from gemma3_runtime.training.trainer import Trainer

    real_write = async_save._write_shards

    def slow_write(final_name, write, *args, **kwargs):
        time.sleep(2.0)
        real_write(final_name, write, *args, **kwargs)

    monkeypatch.setattr(async_save, "_write_shards", slow_write)
    save = tmp_path / "ck"
    cfg = tiny_pretrain_cfg(save, train_iters=ITERS, **{"checkpoint.save_interval": 2, "checkpoint.async_save": True})
    commits: list[tuple[int, int]] = []  # (iteration committed, training iteration when it was)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI runs (OMP_NUM_THREADS=1): the same sums in the same order
    with Trainer(cfg) as trainer:
        trainer.build()
        real_step = trainer.train_step

        def step_then_signal():
            pending = real_step()
            if trainer.train_state.iteration == 3:
                assert trainer.saver.in_flight == 2  # the save of iteration 2 is still being written
                os.kill(os.getpid(), signal.SIGUSR2)
            return pending

        trainer.train_step = step_then_signal
        real_finalize = async_save.AsyncCheckpointSaver._finalize

        def recording_finalize(saver):
            path = real_finalize(saver)
            commits.append((int(path.name.split("_")[1]), trainer.train_state.iteration))
            return path

        monkeypatch.setattr(async_save.AsyncCheckpointSaver, "_finalize", recording_finalize)
        try:
            result = trainer.fit()
        finally:
            torch.set_num_threads(threads)
    assert result.status == "preempted" and result.iteration == 3
    assert commits == [(2, 3), (3, 3)], commits  # iteration 2's save committed after step 3, then step 3's own
    assert read_tracker(save) == 3 and resolve_checkpoint(save).iteration == 3
    assert [p.name for p in save.iterdir() if ".tmp-" in p.name] == []

    monkeypatch.setattr(async_save, "_write_shards", real_write)
    resumed = _run(save, ASYNC)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at iteration 3" in resumed.stderr + resumed.stdout
    assert step_losses(save) == step_losses(synchronous)
    assert_same_tensors(checkpoint_tensors(save), checkpoint_tensors(synchronous))


@pytest.mark.parametrize("value", ["maybe", "2", "[true]"])
def test_async_save_must_be_a_boolean(value):
    from gemma3_runtime.errors import UserInputError
    from gemma3_runtime.training.config import apply_overrides
    from gemma3_runtime.training.recipes import gemma3_tiny_pretrain_config

    cfg = gemma3_tiny_pretrain_config(name="tiny", dir="/tmp/unused")
    with pytest.raises(UserInputError, match="checkpoint.async_save"):
        apply_overrides(cfg, [f"checkpoint.async_save={value}"])


def test_disk_full_in_the_background_write_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    """As tests/unit/test_fault_checkpoint.py's disk-full test, with the write in the background: a 4 MiB tmpfs
    holds the first checkpoint (2.4 MB), not a second; the failure surfaces where the save is finalized."""
    assert_disk_full_keeps_iteration_2(tmp_path, ITERS, ASYNC)

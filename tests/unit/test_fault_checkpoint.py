"""A training run SIGKILLed inside checkpoint save (a real kill of the real `gemma3-runtime run`, through the
test-only kill points of tests/fault_hooks), and a save that runs out of disk on a real size-limited file system.

One save dir takes the three kill points in turn, each run resuming what the previous killed run left (so each
kill also meets the previous one's leftovers); iteration 2 is committed first:
- the shards of iteration 4 are written into `iter_0000004.tmp-<pid>` but it is not renamed yet;
- `iter_0000004` is in place but the tracker still names iteration 2 (killed before the tracker rename);
- the tracker names iteration 4 (killed right after the tracker rename).
After each kill the committed checkpoint stays loadable and nothing partial carries a final name; the same command
run once more completes to weights and optimizer state torch.equal to an uninterrupted run's.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from procs import run_in_own_group
from train_helpers import (
    assert_disk_full_keeps_iteration_2,
    assert_same_tensors,
    checkpoint_tensors,
    run_cli_args,
    runtime_env,
)

from gemma3_runtime.checkpoint.layout import TRACKER_FILE, read_tracker, resolve_checkpoint

pytestmark = [pytest.mark.unit, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ITERS, INTERVAL = 4, 2
#: (name, kill point, iteration committed after it), in the order one save dir takes them: the first run starts
#: fresh (its 2nd save is iteration 4), the others resume from iteration 2 (their 1st save is iteration 4)
KILL_CHAIN = [
    ("shards_written", "megatron.core.dist_checkpointing:save:2:after", 2),
    ("before_tracker_rename", f"gemma3_runtime.checkpoint.io:write_text_atomic:1:before:{TRACKER_FILE}", 2),
    ("after_tracker_rename", f"gemma3_runtime.checkpoint.io:write_text_atomic:1:after:{TRACKER_FILE}", 4),
]


def _run(save: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = runtime_env()
    if kill_at:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "fault_hooks"), env["PYTHONPATH"]])
        env["GEMMA3_TEST_KILL_AT"] = kill_at
    args = run_cli_args(save, ITERS, [f"checkpoint.save_interval={INTERVAL}"])
    return run_in_own_group(args, env, str(REPO), timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    save = tmp_path_factory.mktemp("straight") / "ck"
    res = _run(save)
    assert res.returncode == 0, res.stderr[-3000:]
    return checkpoint_tensors(save)


def test_kills_during_save_then_resume(tmp_path, uninterrupted):
    save = tmp_path / "ck"
    for point, kill_at, committed in KILL_CHAIN:
        killed = _run(save, kill_at)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-3000:])
        assert "fault_hooks: SIGKILL" in killed.stderr, point

        assert read_tracker(save) == committed, point
        resolved = resolve_checkpoint(save)
        assert resolved.iteration == committed and checkpoint_tensors(save), point  # the committed checkpoint loads
        finals = sorted(p.name for p in save.iterdir() if p.name.startswith("iter_") and ".tmp-" not in p.name)
        # every directory under a final name is complete: its run_config.yaml is written last, just before the rename
        assert all((save / name / "run_config.yaml").is_file() for name in finals), (point, finals)

    resumed = _run(save)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"run completed at iteration {ITERS}" in resumed.stdout
    assert read_tracker(save) == ITERS
    assert [p.name for p in save.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []  # leftovers removed
    assert_same_tensors(checkpoint_tensors(save), uninterrupted)


def test_disk_full_during_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    """A 4 MiB tmpfs (in a private mount namespace: `unshare`, as root or through a user namespace) holds the
    tiny model's first checkpoint (2.4 MB) but not a second one."""
    assert_disk_full_keeps_iteration_2(tmp_path, ITERS, [f"checkpoint.save_interval={INTERVAL}"])

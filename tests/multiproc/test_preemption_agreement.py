"""`PreemptionWatcher.agreed_stop` under torchrun (2 CPU processes, gloo): when only one rank is signalled, both
ranks decide to stop after the SAME step, and the agreement runs over a CPU (gloo) group on host tensors - nothing
in it waits for a device, so the host never syncs with the GPU per step for it.

Run as a torchrun worker, this file records each rank's per-step decisions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
STEPS, SIGNAL_AT = 6, 3

pytestmark = [pytest.mark.unit, pytest.mark.slow]


def _worker(out_dir: Path) -> None:
    import torch
    import torch.distributed as dist

    from gemma3_runtime.training.preemption import PreemptionWatcher

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    watcher = PreemptionWatcher()
    decisions, seconds = [], []
    for step in range(STEPS):
        if rank == 1 and step == SIGNAL_AT:
            os.kill(os.getpid(), signal.SIGUSR2)  # only rank 1 is preempted
            time.sleep(0.1)  # let the handler run before this step's check
        start = time.perf_counter()
        decisions.append(watcher.agreed_stop())
        seconds.append(time.perf_counter() - start)
    record = {
        "decisions": decisions,
        "received": watcher.received,
        "group_backend": dist.get_backend(watcher._group),
        "cuda_initialized": torch.cuda.is_initialized(),
        "median_check_us": sorted(seconds)[len(seconds) // 2] * 1e6,
    }
    watcher.restore()
    (out_dir / f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


def test_every_rank_stops_after_the_same_step_over_a_cpu_group(tmp_path):
    sys.path.insert(0, str(TESTS))
    from procs import free_port
    from train_helpers import runtime_env

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--nnodes=1",
        f"--master-port={free_port()}",
        "--master-addr=127.0.0.1",
        __file__,
        str(tmp_path),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=runtime_env())
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    expected = [False] * SIGNAL_AT + [True] * (STEPS - SIGNAL_AT)
    assert [r["decisions"] for r in records] == [expected, expected]
    assert [r["received"] for r in records] == [None, "SIGUSR2"]
    assert all(r["group_backend"] == "gloo" and not r["cuda_initialized"] for r in records)
    print("agreed_stop median per check (us):", [round(r["median_check_us"]) for r in records])


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))

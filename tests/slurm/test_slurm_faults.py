"""THE must-show fault test: a 2-node tiny pretrain on the SLURM testbed takes 10 seeded SIGKILLs spread across ranks,
torchrun, the job wrapper and the batch step (tests/faults.py; the schedule is printed), and completes - killed ranks
and torchruns retried inside the allocation, a job ended by a killed wrapper or batch step continued with
`gemma3-launch retry` in the same run dir - to final weights AND optimizer state torch.equal to an uninterrupted
run's; each kill re-does at most the save interval."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest
from faults import HOOK_DIR, fired, print_schedule, random_schedule
from slurm_helpers import batch_script_pids, wait_forgotten

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ITERS, SAVE_INTERVAL, KILLS, SEED = 24, 4, 10, 2305
SETS = [
    "resources.nodes=2",
    "resources.max_step_retries=10",
    f"overrides=[train.train_iters={ITERS}, train.global_batch_size=4, train.micro_batch_size=2, "
    f"checkpoint.save_interval={SAVE_INTERVAL}, logging.log_interval=1]",
]


def test_ten_random_sigkills_end_in_the_uninterrupted_state(slurm, tmp_path, request):
    import torch
    from faults import final_state

    schedule = random_schedule(SEED, KILLS, ["rank", "torchrun", "wrapper", "batch"], ranks=2, first=2, last=ITERS - 2)
    print_schedule(schedule)
    state_dir = slurm.root / "faults"
    state_dir.mkdir()
    spec = tmp_path / "faults.yaml"
    env_line = json.dumps({"dir": str(state_dir), "faults": schedule})
    spec_text = (HOOK_DIR.parent / "slurm" / "specs" / "pretrain_tiny.yaml").read_text()
    # the image's python drops PYTHONPATH: a .pth file in the image puts the hook directory on its sys.path instead
    # (its sitecustomize does nothing unless GEMMA3_TEST_FAULTS / GEMMA3_TEST_KILL_AT is set); removed at the end
    pth = next(slurm.image.glob("lib/python3*/site-packages")) / "gemma3_test_fault_hooks.pth"
    pth.write_text(f"{HOOK_DIR}\n")
    request.addfinalizer(lambda: pth.unlink(missing_ok=True))
    spec.write_text(spec_text + f"env: {{GEMMA3_TEST_FAULTS: {json.dumps(env_line)}}}\n")
    reference = slurm.submit("pretrain_tiny.yaml", *SETS, tag="faults-reference")
    job = slurm.submit(str(spec), *SETS, tag="faults-killed")
    retries, ends = 0, []
    while (state := slurm.wait(job["job_id"], timeout=600)) != "COMPLETED":
        assert retries < KILLS, f"still {state} after {retries} retries"
        ends.append(slurm.launch("status", job["job_id"]).stdout)
        print(ends[-1])
        res = slurm.launch("retry", job["job_id"], tag="faults-killed")
        assert res.returncode == 0, res.stdout + res.stderr
        retries += 1
    done = fired(state_dir)
    print(f"fired {len(done)} faults; {retries} `retry` calls")
    assert sorted(f["id"] for f in done) == list(range(KILLS))
    rec = slurm.record(job)
    assert retries == sum(1 for f in schedule if f["target"] in ("wrapper", "batch"))
    # no kill reads as a cancel; each killed batch script is named as such (the job's ExitCode 0:9 from scontrol, or
    # sacct once the controller forgot the job, and no `cancel`)
    assert all(end.split()[1] == "FAILED" for end in ends), ends
    batch_ends = sum("cause: batch step killed" in end for end in ends)
    assert batch_ends == sum(1 for f in schedule if f["target"] == "batch"), ends
    # a rank/torchrun kill retries in the job, unless it lands while the job is already ending (then `retry` covers it)
    print(f"in-job retries {rec['step_retries']}")
    assert 1 <= rec["step_retries"] <= KILLS - retries
    log = (job["run_dir"] / "job.log").read_text()
    # the restart after each kill resumes from a committed checkpoint at most the save interval back (a SIGTERM that
    # ends a job may commit one in between: SLURM terminates the steps of a job whose batch step died)
    events = re.findall(r"FAULT \d+: SIGKILL \S+ \[[^]]*\] at iteration (\d+)|resumed at iteration (\d+)", log)
    killed_at = None
    for fault, resumed in events:
        if fault:
            killed_at = int(fault)
        elif killed_at is not None:
            assert killed_at - int(resumed) <= SAVE_INTERVAL, (killed_at, resumed)  # < 0: it ran on, then saved
            killed_at = None
    assert slurm.wait(reference["job_id"], timeout=600) == "COMPLETED"
    ref = final_state(slurm.root / "ckpt" / "faults-reference", ITERS)
    got = final_state(slurm.root / "ckpt" / "faults-killed", ITERS)
    assert ref.keys() == got.keys() and any("optimizer" in k for k in ref)
    differing = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not differing, f"state differs after {KILLS} kills: {differing[:5]}"


def test_scancel_reads_as_cancelled_not_as_a_kill(slurm):
    """The other side of the batch-step rule: a plain `scancel` (SIGTERM to the batch script, ExitCode 0:15), not
    through `gemma3-launch cancel`, reads CANCELLED with no kill named; `retry` would still continue it."""
    job = slurm.submit(
        "pretrain_tiny.yaml", "overrides=[train.train_iters=100000, logging.log_interval=1]", tag="scancel"
    )
    slurm.wait_log(job, "step      2/100000 |")
    subprocess.run(["scancel", job["slurm_id"]], check=True)
    assert slurm.wait(job["job_id"], timeout=120) == "CANCELLED"
    status = slurm.launch("status", job["job_id"]).stdout
    assert "killed" not in status and f"gemma3-launch retry {job['job_id']}" in status, status
    assert slurm.record(job)["state"] == "CANCELLED"


def test_a_batch_kill_first_seen_after_the_controller_forgot_it_reads_failed(slurm):
    """The batch script SIGKILLed and no `status` asked until slurmctld forgot the job (MinJobAge): the exit signal
    then comes from sacct, so the job still reads FAILED "batch step killed", not the CANCELLED the job wrapper
    records when SLURM SIGTERMs it."""
    job = slurm.submit(
        "pretrain_tiny.yaml", "overrides=[train.train_iters=100000, logging.log_interval=1]", tag="batch-kill"
    )
    slurm.wait_log(job, "step      2/100000 |")
    batch = batch_script_pids(job["slurm_id"])
    assert batch, f"no batch script process for SLURM job {job['slurm_id']}"
    for pid in batch:
        os.kill(pid, signal.SIGKILL)
    wait_forgotten(job["slurm_id"])
    status = slurm.launch("status", job["job_id"]).stdout
    assert status.split()[1] == "FAILED" and "cause: batch step killed" in status, status

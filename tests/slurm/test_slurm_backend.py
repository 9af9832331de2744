"""The SLURM backend against a real cluster, jobs created through submitit and run inside the image stand-in: import
of the real 270M, a 2-node torchrun rendezvous (`render` is what ran), preemption -> checkpoint -> requeue -> resume to
the same weights (a new container name per attempt) with one offline W&B run id across both attempts, cancel, and status
with/without slurmdbd and after MinJobAge.

Tests run in file order and share jobs (the import job doubles as "finished longer ago than MinJobAge").
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
from slurm_helpers import SENTINEL, assert_render_is_what_ran, pyxis_tasks, start_cluster, wait_forgotten
from wandb_records import records, run_id_and_steps

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

JOBS: dict[str, dict] = {}
TRAIN_ITERS = 200
PRETRAIN_SETS = [
    "resources.nodes=2",
    f"overrides=[train.train_iters={TRAIN_ITERS}, train.global_batch_size=4, train.micro_batch_size=2, "
    "checkpoint.save_interval=1000, logging.log_interval=10]",
]
#: the preempted job saves every 10 steps with the write in the background (checkpoint.async_save), so the preemption
#: finds a save in flight or just committed; the reference saves once, synchronously, at the end
ASYNC_SETS = [
    PRETRAIN_SETS[0],
    PRETRAIN_SETS[1].replace(
        "checkpoint.save_interval=1000", "checkpoint.save_interval=10, checkpoint.async_save=true"
    ),
]
#: the preempted job also logs to W&B, offline (the testbed has no network): W&B's files land in its checkpoint dir
WANDB_SETS = ["wandb.project=slurm-testbed", "wandb.tags=[preempted]", "env.WANDB_MODE=offline"]


def _no_secret_anywhere(slurm, run_dir: Path) -> None:
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SENTINEL not in path.read_text(errors="replace"), f"secret value in {path}"
    for db in (slurm.root / "state").rglob("*.sqlite"):
        rows = sqlite3.connect(db).execute("SELECT * FROM jobs").fetchall()
        assert SENTINEL not in repr(rows)


def test_import_real_270m_through_sbatch_and_srun(slurm, real_270m_dir):
    job = slurm.submit("import_270m.yaml", follow=True)
    JOBS["import"] = job
    assert job["rc"] == 0, job["stdout"][-3000:] + job["stderr"][-2000:]
    ckpt = slurm.root / "ckpt" / "import-270m"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "0"
    assert (ckpt / "iter_0000000" / "run_config.yaml").exists()
    rec = slurm.record(job)
    assert rec["state"] == "COMPLETED" and rec["exit_code"] == 0
    # the pyxis flags reached the task (the fake pyxis exports them) and the image stand-in's Python ran the job
    assert rec["runtime"]["container_image_flag"] == str(slurm.image)
    assert rec["runtime"]["python_executable"].startswith(str(slurm.image))
    assert rec["runtime"]["versions"]["megatron-core"] == "0.16.1"
    assert rec["outputs"]["checkpoint"] == str(ckpt)
    assert rec["git"]["sha"] and rec["spec_hash"] and rec["backend_id"].isdigit()
    assert "#SBATCH --container-image" not in (job["run_dir"] / "sbatch.sh").read_text()  # pyxis flags go on srun
    assert slurm.status(job["job_id"]) == "COMPLETED"
    _no_secret_anywhere(slurm, job["run_dir"])


def _step_line(iteration: int, total: int) -> str:
    """The start of the training log line of `iteration` (training/metrics.py's progress line)."""
    return f"step {iteration:>{len(str(total))}d}/{total} |"


@pytest.fixture(scope="module")
def pretrain_pair(slurm):
    """The same 2-node tiny pretrain twice, submitted together: one runs through, one is preempted mid-run with
    exactly what submitit's `--signal=USR2@LEAD` delivers near the time limit: USR2 to every step of the job (the
    job wrapper's, and the training step's node wrappers and workers), not to the batch shell. The preempted one
    logs to W&B offline and saves in the background."""
    pair = {
        "preempted": slurm.submit("pretrain_tiny.yaml", *ASYNC_SETS, *WANDB_SETS, tag="preempted"),
        "reference": slurm.submit("pretrain_tiny.yaml", *PRETRAIN_SETS, tag="reference"),
    }
    slurm.wait_log(pair["preempted"], _step_line(20, TRAIN_ITERS))
    subprocess.run(["scancel", "--signal=USR2", pair["preempted"]["slurm_id"]], check=True)
    return pair


def test_two_node_job_gets_a_torchrun_rendezvous_from_slurm(slurm, pretrain_pair):
    job = pretrain_pair["reference"]
    assert slurm.wait(job["job_id"]) == "COMPLETED", (job["run_dir"] / "job.log").read_text()[-3000:]
    ranks = [json.loads(p.read_text()) for p in sorted((job["run_dir"] / "exit").glob("train-*/rank-*.json"))]
    assert sorted(r["rank"] for r in ranks) == ["0", "1"]
    assert {r["world_size"] for r in ranks} == {"2"}
    assert {r["slurm_nodename"]: r["node_rank"] for r in ranks} == {"n1": "0", "n2": "1"}
    first_host = subprocess.run(
        ["scontrol", "show", "hostnames", "n[1-2]"], capture_output=True, text=True
    ).stdout.split()[0]
    assert {r["master_addr"] for r in ranks} == {first_host} == {"n1"}
    assert {r["exit_code"] for r in ranks} == {0}
    assert_render_is_what_ran(job)


def _final_state_dict(ckpt: Path) -> tuple[int, dict]:
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    iteration = int((ckpt / "latest_checkpointed_iteration.txt").read_text())
    out = ckpt.parent / f"{ckpt.name}.final.pt"
    dcp_to_torch_save(str(ckpt / f"iter_{iteration:07d}"), str(out))
    sd = torch.load(out, weights_only=False)
    return iteration, {k: v for k, v in sd.items() if isinstance(v, torch.Tensor) and "_extra_state" not in k}


def test_preempted_pretrain_requeues_resumes_and_matches_uninterrupted_weights(slurm, pretrain_pair):
    import torch

    job = pretrain_pair["preempted"]
    assert slurm.wait(job["job_id"], timeout=420) == "COMPLETED", (job["run_dir"] / "job.log").read_text()[-4000:]
    rec = slurm.record(job)
    states = [s["state"] for s in rec["states"]]
    assert "REQUEUED" in states and states[-1] == "COMPLETED"
    assert [(s["name"], s["exit_code"], s["attempt"]) for s in rec["steps"]] == [("train", 199, 0), ("train", 0, 1)]
    log = (job["run_dir"] / "job.log").read_text()
    assert "received SIGUSR2" in log and "requeueing SLURM job" in log and "resuming from" in log
    assert "the write goes on in the background" in log and "committed" in log  # async saves, committed
    # one container per attempt, shared by every step of that attempt (pyxis imports the image once per attempt)
    names = {t["name"] for t in pyxis_tasks(job["slurm_id"])}
    assert names == {f"gemma3-{job['slurm_id']}-0", f"gemma3-{job['slurm_id']}-1"}
    assert [a["container_name"] for a in rec["attempts"]] == sorted(names)
    assert_render_is_what_ran(job)

    assert slurm.wait(pretrain_pair["reference"]["job_id"]) == "COMPLETED"
    it_ref, ref = _final_state_dict(slurm.root / "ckpt" / "reference")
    it_pre, pre = _final_state_dict(slurm.root / "ckpt" / "preempted")
    assert it_ref == it_pre == TRAIN_ITERS
    assert ref.keys() == pre.keys() and any(k.startswith("decoder.") for k in ref)
    differing = [k for k in ref if not torch.equal(ref[k], pre[k])]
    assert not differing, f"weights differ after resume: {differing[:5]}"
    _assert_one_wandb_run_across_attempts(slurm.root / "ckpt" / "preempted", log)


def _assert_one_wandb_run_across_attempts(save_dir: Path, log: str) -> None:
    """Each attempt left an offline W&B run (`wandb sync` uploads them later) under the job's one run id; the first
    attempt's history ends at or before the step it saved on preemption, the second's starts right after it."""
    resumed = re.search(r"resuming from \S*iter_(\d{7})", log)
    assert resumed, "no 'resuming from .../iter_NNNNNNN' line in job.log"
    resumed_step = int(resumed.group(1))
    run_id = (save_dir / "wandb_run_id").read_text().strip()
    files = sorted(save_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2, f"expected one offline W&B run per attempt, got {files}"
    (first_id, first_steps), (second_id, second_steps) = (run_id_and_steps(f) for f in files)
    assert first_id == second_id == run_id
    assert first_steps and max(first_steps) <= resumed_step, (first_steps, resumed_step)
    assert second_steps[0] == resumed_step + 1, (second_steps, resumed_step)  # an attempt logs its first step
    assert second_steps == sorted(set(second_steps)) and second_steps[-1] == TRAIN_ITERS
    run = next(r.run for r in records(files[1]) if r.WhichOneof("record_type") == "run")
    assert (run.project, run.display_name, list(run.tags)) == ("slurm-testbed", "slurm-pretrain-tiny", ["preempted"])


def test_cancel(slurm):
    job = slurm.submit(
        "pretrain_tiny.yaml", "overrides=[train.train_iters=100000, logging.log_interval=1]", tag="cancel"
    )
    slurm.wait_log(job, _step_line(2, 100000))
    res = slurm.launch("cancel", job["job_id"])
    assert res.returncode == 0, res.stderr
    assert slurm.wait(job["job_id"], timeout=120) == "CANCELLED"
    JOBS["cancel"] = job
    assert subprocess.run(["squeue", "-h", "-j", job["slurm_id"]], capture_output=True, text=True).stdout.strip() == ""


def test_status_after_min_job_age_with_slurmdbd(slurm):
    job = JOBS.get("import") or pytest.skip(
        "needs the job submitted by test_import_real_270m_through_sbatch_and_srun in this session (deselected?)"
    )
    wait_forgotten(job["slurm_id"])  # finished longer ago than MinJobAge: squeue and scontrol no longer know it
    assert slurm.status(job["job_id"]) == "COMPLETED"  # from the job's own terminal-state file
    state_file = job["run_dir"] / "state.json"
    saved = state_file.read_bytes()
    state_file.unlink()
    try:
        assert slurm.status(job["job_id"]) == "COMPLETED"  # then from sacct (accounting exists)
    finally:
        state_file.write_bytes(saved)
    if "cancel" in JOBS:
        wait_forgotten(JOBS["cancel"]["slurm_id"])
        assert slurm.status(JOBS["cancel"]["job_id"]) == "CANCELLED"


def test_status_without_slurmdbd(slurm):
    start_cluster(with_dbd=False)  # accounting_storage/none: sacct is disabled
    try:
        sacct = subprocess.run(["sacct", "-n", "-j", "1"], capture_output=True, text=True)
        assert sacct.returncode != 0 or not sacct.stdout.strip()
        job = slurm.submit(
            "import_270m.yaml", "model=/nonexistent/model", "checkpoint.dir=${SLURM_TEST_DIR}/ckpt/never"
        )
        assert slurm.wait(job["job_id"], timeout=300) == "FAILED"  # from squeue / scontrol while it is known
        wait_forgotten(job["slurm_id"])
        assert slurm.status(job["job_id"]) == "FAILED"  # from the terminal-state file: no sacct needed
        rec = slurm.record(job)
        assert rec["exit_code"] == 2  # the runtime's bad-input code, recorded by the job itself
        (job["run_dir"] / "state.json").unlink()
        assert slurm.status(job["job_id"]) == "FAILED"  # nothing left to ask: the last recorded state stands
    finally:
        start_cluster(with_dbd=True)  # the tiers after this one run on a cluster with accounting, as most sites do

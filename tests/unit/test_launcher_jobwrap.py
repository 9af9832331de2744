"""The job wrapper's pieces that need no scheduler: worker exit codes, result.json, the plan's commands, records."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gemma3_launch.contract import REQUEUE_EXIT_CODE
from gemma3_launch.jobwrap_io import (
    RANK_EXIT_DIR_ENV,
    every_rank_asked_for_requeue,
    executed_command,
    exit_dir,
    step_result,
)
from gemma3_launch.jobwrap_node import _children, node_env
from gemma3_launch.plan import CONTAINER_NAME_ENV, Cluster, JobPlan, Step, make_plan
from gemma3_launch.record import add_state, read_record, update_record, write_json_atomic
from gemma3_launch.registry import Registry

pytestmark = pytest.mark.unit


def test_rank_wrapper_records_the_workers_exit_code(tmp_path):
    """`jobwrap rank MODULE` runs the module as __main__ and writes its exit code where the node wrapper looks."""
    env = dict(os.environ, **{RANK_EXIT_DIR_ENV: str(tmp_path), "RANK": "3", "WORLD_SIZE": "4", "GROUP_RANK": "1"})
    # `python -m gemma3_launch.jobwrap` with a bad usage exits 2: a real module with a known exit code
    res = subprocess.run(
        [sys.executable, "-m", "gemma3_launch.jobwrap", "rank", "gemma3_launch.jobwrap", "bogus"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    rec = json.loads((tmp_path / "rank-3.json").read_text())
    assert (rec["exit_code"], rec["rank"], rec["world_size"], rec["node_rank"]) == (2, "3", "4", "1")


@pytest.mark.parametrize(
    "codes, requeue",
    [
        ({0: REQUEUE_EXIT_CODE, 1: REQUEUE_EXIT_CODE}, True),  # both saved; srun stopped the slower node (exit 143)
        ({0: 0, 1: REQUEUE_EXIT_CODE}, True),
        ({1: REQUEUE_EXIT_CODE}, False),  # rank 0 never recorded an exit: it did not finish
        ({0: 1, 1: REQUEUE_EXIT_CODE}, False),  # a worker failed: a failure, not a requeue
        ({0: 0, 1: 0}, False),
    ],
)
def test_job_level_requeue_needs_every_rank_to_have_asked(tmp_path, monkeypatch, codes, requeue):
    """A 2-node step whose srun ended non-zero is a requeue only when all workers recorded {0, 199} with a 199."""
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    step = Step("train", (), nnodes=2, nproc_per_node=1)
    exits = exit_dir(tmp_path, step)
    exits.mkdir(parents=True)
    for rank, code in codes.items():
        write_json_atomic(exits / f"rank-{rank}.json", {"rank": str(rank), "exit_code": code})
    assert every_rank_asked_for_requeue(tmp_path, step) is requeue


def test_children_finds_direct_children_only():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess,sys,time; subprocess.Popen([sys.executable,'-c','import time; time.sleep(30)']); "
            "time.sleep(30)",
        ]
    )  # noqa: E501
    try:
        import time

        for _ in range(50):
            kids = _children(proc.pid)
            if kids:
                break
            time.sleep(0.1)
        assert len(kids) == 1 and _children(os.getpid()).count(proc.pid) == 1
    finally:
        for pid in _children(proc.pid):
            os.kill(pid, 9)
        proc.kill()
        proc.wait()


def test_the_step_summary_comes_from_the_runtimes_result_json(tmp_path, monkeypatch):
    """The runtime's result writer (gemma3_runtime.cli.result) and the wrapper's reader meet at one path."""
    from gemma3_runtime.cli import result

    step = Step("train", ("run",))
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    plan = make_plan(_spec(), Cluster("local"))
    monkeypatch.setenv("GEMMA3_RESULT_FILE", node_env(plan, step, tmp_path, "0")["GEMMA3_RESULT_FILE"])
    assert step_result(tmp_path, step, 0) == {}  # a crashed step wrote none
    result.reset()
    result.add_summary(["run completed at iteration 6 in 10 s"])
    result.write("run", 0)
    assert step_result(tmp_path, step, 0) == {
        "command": "run",
        "exit_code": 0,
        "summary": ["run completed at iteration 6 in 10 s"],
        "outputs": {},
        "answers_file": None,
    }


def _spec(**over):
    from gemma3_launch.spec import JobSpec

    base = {"name": "t", "kind": "pretrain", "recipe": "gemma3_tiny_pretrain", "data": {"format": "mock"}}
    base["checkpoint"] = {"dir": "/ck"}
    base.update(over)
    return JobSpec.model_validate(base)


def test_the_wrapper_executes_the_plans_command_substituting_only_the_container_name(monkeypatch):
    plan = make_plan(_spec(resources={"nodes": 2}), Cluster("slurm", workdir="/w"))
    monkeypatch.setenv(CONTAINER_NAME_ENV, "gemma3-41-2")
    step = plan.steps[0]
    executed = executed_command(step)
    changed = [(a, b) for a, b in zip(step.command, executed, strict=True) if a != b]
    assert changed == [("--container-name=${GEMMA3_CONTAINER_NAME}", "--container-name=gemma3-41-2")]
    assert step.node_command[:3] == ("torchrun", "--nnodes=2", "--nproc-per-node=1")
    env = node_env(plan, step, __import__("pathlib").Path("/w/runs/x"), "1")
    assert env["PET_NODE_RANK"] == "1" and {"PET_MASTER_ADDR", "PET_MASTER_PORT"} <= env.keys()


def test_the_plan_round_trips_through_json_typed(tmp_path):
    plan = make_plan(_spec(env={"A": "x y"}, secrets=["HF_TOKEN"]), Cluster("slurm", workdir="/w"))
    back = JobPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert back == plan and isinstance(back.steps[0], Step) and back.resources.nodes == 1
    with pytest.raises(ValueError, match=r"plan.steps\[0\].nnodes: expected int"):
        JobPlan.from_dict({**plan.to_dict(), "steps": [{**plan.to_dict()["steps"][0], "nnodes": "2"}]})


def test_record_updates_are_atomic_and_keep_history(tmp_path):
    write_json_atomic(tmp_path / "job.json", {"job_id": "j"})
    update_record(tmp_path, lambda r: add_state(r, "RUNNING"))
    update_record(tmp_path, lambda r: add_state(r, "RUNNING"))  # no duplicate entry
    rec = update_record(tmp_path, lambda r: add_state(r, "COMPLETED", exit_code=0))
    assert [s["state"] for s in rec["states"]] == ["RUNNING", "COMPLETED"] and rec["state"] == "COMPLETED"
    assert read_record(tmp_path) == rec
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_registry_lookup_by_prefix_and_rebuild(tmp_path):
    reg = Registry(tmp_path / "index.sqlite")
    runs = tmp_path / "runs"
    for jid in ("alpha-1", "alpha-2", "beta-1"):
        (runs / jid).mkdir(parents=True)
        rec = {
            "job_id": jid,
            "kind": "import",
            "backend": "local",
            "state": "COMPLETED",
            "run_dir": str(runs / jid),
            "submitted_at": jid,
        }
        write_json_atomic(runs / jid / "job.json", rec)
        reg.upsert(rec)
    assert reg.get("beta")["job_id"] == "beta-1"
    assert reg.get("alpha") is None  # ambiguous prefix
    (tmp_path / "index.sqlite").unlink()
    fresh = Registry(tmp_path / "index.sqlite")
    assert fresh.all() == [] and fresh.rebuild([str(runs)]) == 3
    assert {r["job_id"] for r in fresh.all()} == {"alpha-1", "alpha-2", "beta-1"}


def test_generate_answers_come_from_the_results_answers_file(tmp_path):
    from gemma3_launch.jobwrap_io import answers

    out = tmp_path / "generate_after.jsonl"
    out.write_text(json.dumps({"prompt": "Wordcode: a b ->", "text": " b-ka a-ka\n", "tokens": 5}) + "\n")
    assert answers(str(out)) == ["'Wordcode: a b ->' -> 'b-ka a-ka'"]
    assert answers(None) == [] and answers(str(tmp_path / "no")) == []

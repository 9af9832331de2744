"""The pod entrypoint (bash, PID 1 in every pod), run here with a stand-in `python3` that records how it is called:
the master writes the plan and hands over to the job wrapper, workers join only the multi-node steps once the
master listens, and exit codes (REQUEUE_EXIT_CODE included) and SIGTERM pass through unchanged."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from k8s_helpers import REPO, k8s_plan

from gemma3_launch.contract import REQUEUE_EXIT_CODE
from gemma3_launch.render_k8s import entrypoint_script

pytestmark = pytest.mark.k8s
FEATURES = REPO / "tests" / "k8s" / "specs" / "k8s_features_2node.yaml"

# Records argv and the plan it finds, then behaves as FAKE_RC / FAKE_SLEEP say (SIGTERM -> exit 199, like jobwrap).
FAKE_PYTHON = """#!/bin/bash
printf '%s\\n' "$@" > "$FAKE_LOG/argv.$RANK"
echo "$GEMMA3_NODE_RANK" > "$FAKE_LOG/node_rank.$RANK"
trap 'exit 199' TERM
[ -n "${FAKE_SLEEP:-}" ] && { touch "$FAKE_LOG/started.$RANK"; sleep "$FAKE_SLEEP" & wait; }
exit "${FAKE_RC:-0}"
"""


#: How each operator tells a pod its node rank and the master's address and port.
OPERATOR_VARS = {
    "pytorchjob": ("RANK", "MASTER_ADDR", "MASTER_PORT"),
    "trainjob": ("PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"),
}


@pytest.fixture(params=sorted(OPERATOR_VARS))
def api(request: pytest.FixtureRequest) -> str:
    return request.param


def _op(api: str, rank: int, port: int | str) -> dict[str, str]:
    """The operator's variables for node `rank`; RANK too, which only names the fake's output files."""
    rank_var, addr_var, port_var = OPERATOR_VARS[api]
    return {"RANK": str(rank), rank_var: str(rank), addr_var: "127.0.0.1", port_var: str(port)}


def _setup(tmp_path: Path, nodes: int = 2, api: str = "pytorchjob") -> tuple:
    plan = k8s_plan(FEATURES, runs_dir=str(tmp_path / "runs"), **{"resources.nodes": str(nodes), "k8s.api": api})
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python3").write_text(FAKE_PYTHON)
    (shim / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "FAKE_LOG": str(tmp_path), "HOSTNAME": "pod-0"}
    return entrypoint_script(plan), env, Path(plan.run_dir), plan


def _run(script: str, env: dict, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], env={**env, **extra}, capture_output=True, text=True, timeout=60)


def test_master_writes_the_plan_and_runs_the_job_wrapper(tmp_path: Path, api: str) -> None:
    script, env, run_dir, plan = _setup(tmp_path, api=api)
    result = _run(script, env, **_op(api, 0, 1))
    assert result.returncode == 0, result.stderr
    assert json.loads((run_dir / "plan.json").read_text()) == json.loads(json.dumps(plan.to_dict()))
    assert (tmp_path / "argv.0").read_text().split("\n")[:-1] == ["-m", "gemma3_launch.jobwrap", "job", str(run_dir)]
    assert not list(run_dir.glob(".plan.json.*")), "temporary plan copy left behind"


def test_requeue_exit_code_reaches_the_operator(tmp_path: Path, api: str) -> None:
    script, env, _, _ = _setup(tmp_path, api=api)
    result = _run(script, env, **_op(api, 0, 1), FAKE_RC=str(REQUEUE_EXIT_CODE))
    assert result.returncode == REQUEUE_EXIT_CODE
    result = _run(script, env, **_op(api, 0, 1), FAKE_RC="1")
    assert result.returncode == 1


def test_worker_waits_for_the_master_then_runs_only_the_multinode_step(tmp_path: Path, api: str) -> None:
    script, env, run_dir, plan = _setup(tmp_path, api=api)
    train = [i for i, step in enumerate(plan.steps) if step.nnodes > 1]
    assert [plan.steps[i].name for i in train] == ["train"]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        proc = subprocess.Popen(
            ["bash", "-c", script],
            env={**env, **_op(api, 1, port), "FAKE_RC": "3"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)
        assert proc.poll() is None and not (tmp_path / "argv.1").exists(), "worker started before the master listened"
        listener.listen(16)
        assert proc.wait(timeout=30) == 3  # the node step's exit code is the pod's
    argv = (tmp_path / "argv.1").read_text().split("\n")[:-1]
    assert argv == ["-m", "gemma3_launch.jobwrap", "node", str(run_dir), str(train[0])]
    assert (tmp_path / "node_rank.1").read_text().strip() == "1"  # the wrapper's torchrun --node-rank


def test_worker_restarts_to_rejoin_when_the_master_went_away(tmp_path: Path, api: str) -> None:
    script, env, _, _ = _setup(tmp_path, api=api)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    proc = subprocess.Popen(
        ["bash", "-c", script],
        env={
            **env,
            **_op(api, 1, listener.getsockname()[1]),
            "FAKE_SLEEP": "2",
            "FAKE_RC": "1",
        },
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 20
    while not (tmp_path / "started.1").exists() and time.time() < deadline:
        time.sleep(0.1)
    listener.close()  # the master's torchrun is gone while this node's step fails
    assert proc.wait(timeout=30) == REQUEUE_EXIT_CODE
    assert "node 0 went away" in proc.stderr.read()


def test_sigterm_on_a_worker_pod_reaches_the_step(tmp_path: Path, api: str) -> None:
    script, env, _, _ = _setup(tmp_path, api=api)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        proc = subprocess.Popen(
            ["bash", "-c", script],
            env={
                **env,
                **_op(api, 1, listener.getsockname()[1]),
                "FAKE_SLEEP": "30",
            },
        )
        deadline = time.time() + 20
        while not (tmp_path / "started.1").exists() and time.time() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == REQUEUE_EXIT_CODE


def test_single_node_job_has_no_worker_part(tmp_path: Path) -> None:
    script, _, _, _ = _setup(tmp_path, nodes=1)
    assert "node_step" not in script and "jobwrap job" in script


def test_master_entrypoint_with_the_real_job_wrapper(tmp_path: Path) -> None:
    """No stand-in: the real gemma3_launch.jobwrap runs a one-step plan (`gemma3-runtime --help`) as the master
    pod would, and leaves the job's own record (job.json: COMPLETED, the step, the versions it ran with)."""
    import sys

    from gemma3_launch.plan import Cluster, Step, replace_steps
    from gemma3_launch.record import read_record

    plan = k8s_plan(FEATURES, runs_dir=str(tmp_path / "runs"), **{"resources.nodes": "1"})
    plan = replace_steps(plan, (Step("hello", ("--help",)),), Cluster("k8s", python=sys.executable))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "RANK": "0",
        "HOSTNAME": "pod-0",
    }
    result = subprocess.run(
        ["bash", "-c", entrypoint_script(plan)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = read_record(plan.run_dir)
    assert record["state"] == "COMPLETED" and [s["name"] for s in record["steps"]] == ["hello"]
    assert "gemma3-launch" in record["runtime"]["versions"]
    assert "usage: gemma3-runtime" in result.stdout

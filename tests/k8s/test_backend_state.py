"""How the k8s backend reads a job's state: a PyTorchJob from the operator's conditions, a TrainJob from its
conditions, status.jobsStatus and the child JobSet's restarts (pure; the real-API tier checks the same path end to
end)."""

from __future__ import annotations

import pytest

from gemma3_launch.backends.k8s import state_from_pytorchjob as state_from_job
from gemma3_launch.backends.k8s import state_from_trainjob
from gemma3_launch.record import ACTIVE_STATES, TERMINAL_STATES

pytestmark = pytest.mark.k8s


def _job(*conditions: tuple[str, str], reason: str = "", suspend: bool = False) -> dict:
    return {
        "spec": {"runPolicy": {"suspend": suspend}},
        "status": {"conditions": [{"type": t, "status": s, "reason": reason} for t, s in conditions]},
    }


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ((), "PENDING"),
        ((("Created", "True"),), "PENDING"),
        ((("Created", "True"), ("Running", "True")), "RUNNING"),
        ((("Created", "True"), ("Running", "False"), ("Restarting", "True")), "REQUEUED"),
        ((("Created", "True"), ("Running", "False"), ("Succeeded", "True")), "COMPLETED"),
        ((("Created", "True"), ("Running", "False"), ("Failed", "True")), "FAILED"),
        ((("Created", "True"), ("Suspended", "True")), "SUSPENDED"),
    ],
)
def test_conditions_map_to_states(conditions: tuple, expected: str) -> None:
    state = state_from_job(_job(*conditions))
    assert state == expected and state in ACTIVE_STATES + TERMINAL_STATES


def test_deadline_failure_is_a_timeout_and_suspended_jobs_wait() -> None:
    assert state_from_job(_job(("Failed", "True"), reason="DeadlineExceeded")) == "TIMEOUT"
    assert state_from_job(_job(suspend=True)) == "SUSPENDED"
    assert state_from_job({"spec": {}}) == "PENDING"


def _trainjob(*conditions: tuple[str, str], jobs: tuple = (), reason: str = "", suspend: bool = False) -> dict:
    return {
        "spec": {"suspend": suspend},
        "status": {
            "conditions": [{"type": t, "status": s, "reason": reason} for t, s in conditions],
            "jobsStatus": [
                {"name": "node", "active": a, "ready": r, "succeeded": 0, "failed": 0, "suspended": 0} for a, r in jobs
            ],
        },
    }


@pytest.mark.parametrize(
    ("job", "restarts", "expected"),
    [
        (_trainjob(), 0, "PENDING"),
        (_trainjob(jobs=((1, 0),)), 0, "PENDING"),  # pods scheduled, not yet ready
        (_trainjob(jobs=((1, 1),)), 0, "RUNNING"),
        (_trainjob(jobs=((1, 0),)), 1, "REQUEUED"),  # the JobSet restarted; the new attempt is not ready yet
        (_trainjob(jobs=((1, 1),)), 1, "RUNNING"),  # ... and now it is
        (_trainjob(("Complete", "True"), jobs=((0, 0),)), 1, "COMPLETED"),
        (_trainjob(("Failed", "True")), 0, "FAILED"),
        (_trainjob(("Failed", "True"), reason="DeadlineExceeded"), 0, "TIMEOUT"),
        (_trainjob(("Suspended", "True")), 0, "SUSPENDED"),
        (_trainjob(suspend=True), 0, "SUSPENDED"),
        (_trainjob(("Complete", "False"), jobs=((1, 1),)), 0, "RUNNING"),
    ],
)
def test_trainjob_states(job: dict, restarts: int, expected: str) -> None:
    state = state_from_trainjob(job, restarts)
    assert state == expected and state in ACTIVE_STATES + TERMINAL_STATES

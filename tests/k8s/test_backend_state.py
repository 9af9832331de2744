"""How the k8s backend reads a PyTorchJob's state from the operator's conditions (pure; the real-API tier
checks the same path end to end)."""

from __future__ import annotations

import pytest

from gemma3_launch.backends.k8s import state_from_job
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

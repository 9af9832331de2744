"""Fault-injection harness for the process-kill tests: a seeded schedule of SIGKILLs and the environment that arms
tests/fault_hooks/kill_schedule.py (the hook itself; production code carries nothing for it).

A schedule is a list of faults {id, target, rank, iteration}: after training step `iteration`, global rank `rank`
SIGKILLs `target` (rank | torchrun | node | wrapper | batch). Each fires once (a marker file in the state dir).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HOOK_DIR = Path(__file__).resolve().parent / "fault_hooks"
FAULTS_ENV = "GEMMA3_TEST_FAULTS"


def random_schedule(seed: int, count: int, targets: list[str], ranks: int, first: int, last: int) -> list[dict]:
    """`count` faults on distinct iterations in [first, last], targets cycled so each kind occurs, ranks at random."""
    rng = random.Random(seed)
    iterations = sorted(rng.sample(range(first, last + 1), count))
    kinds = [targets[i % len(targets)] for i in range(count)]
    rng.shuffle(kinds)
    return [
        {"id": i, "target": kind, "rank": rng.randrange(ranks), "iteration": it}
        for i, (kind, it) in enumerate(zip(kinds, iterations, strict=True))
    ]


def faults_env(schedule: list[dict], state_dir: Path) -> dict[str, str]:
    """What a job's processes need to carry the schedule: the hook first on PYTHONPATH, the schedule as JSON."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return {FAULTS_ENV: json.dumps({"dir": str(state_dir), "faults": schedule})}


def fired(state_dir: Path) -> list[dict]:
    """The faults that fired (what each marker file recorded: the fault, the pids killed, the host)."""
    return [json.loads(p.read_text() or "{}") for p in sorted(state_dir.glob("fired-*"))]


def print_schedule(schedule: list[dict]) -> None:
    """The schedule in the test output (seeded: the same seed gives the same list)."""
    for f in schedule:
        print(f"fault {f['id']}: SIGKILL {f['target']:<8} from rank {f['rank']} after iteration {f['iteration']}")

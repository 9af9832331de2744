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


def final_state(ckpt: Path, iterations: int) -> dict:
    """The last checkpoint's tensors - model weights and optimizer state - flattened to {dotted key: tensor}."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    iteration = int((ckpt / "latest_checkpointed_iteration.txt").read_text())
    assert iteration == iterations, f"{ckpt}: last checkpoint {iteration}, expected {iterations}"
    out = ckpt.parent / f"{ckpt.name}.final.pt"
    dcp_to_torch_save(str(ckpt / f"iter_{iteration:07d}"), str(out))
    flat: dict = {}

    def walk(prefix: str, obj: object) -> None:
        if isinstance(obj, torch.Tensor):
            flat[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}", v)

    walk("", torch.load(out, weights_only=False))
    return {k: v for k, v in flat.items() if "_extra_state" not in k}

"""SLURM tier: the real cluster (scripts/slurm_testbed) is started ONCE per session and stopped at its end."""

from __future__ import annotations

import subprocess
import time

import pytest
from slurm_helpers import HARNESS, Cluster, missing_resource, start_cluster


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Cluster:
    why = missing_resource()
    if why:
        pytest.skip(why)
    t0 = time.time()
    try:
        start_cluster(with_dbd=True)
    except RuntimeError as exc:
        subprocess.run(["bash", str(HARNESS / "down.sh")], capture_output=True)
        pytest.fail(str(exc))
    print(f"\n[slurm tier] cluster up in {time.time() - t0:.0f}s")
    yield Cluster(tmp_path_factory.mktemp("slurm"))
    subprocess.run(["bash", str(HARNESS / "down.sh")], capture_output=True, timeout=120)

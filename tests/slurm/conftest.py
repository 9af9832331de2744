"""SLURM tier: the real cluster (scripts/slurm_testbed) is started ONCE per session and stopped at its end. A missing
prerequisite FAILS the tier with a one-line reason (deselect it with `-m "not slurm"`)."""

from __future__ import annotations

import subprocess
import time

import pytest
from slurm_helpers import HARNESS, Cluster, build_image, missing_resource, start_cluster


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Cluster:
    why = missing_resource()
    if why:
        pytest.fail(why, pytrace=False)
    t0 = time.time()
    try:
        start_cluster(with_dbd=True)
        image = build_image(tmp_path_factory.mktemp("image") / "gemma3-image")
    except RuntimeError as exc:
        subprocess.run(["bash", str(HARNESS / "down.sh")], capture_output=True)
        pytest.fail(str(exc), pytrace=False)
    print(f"\n[slurm tier] cluster and image stand-in up in {time.time() - t0:.0f}s")
    yield Cluster(tmp_path_factory.mktemp("slurm"), image)
    subprocess.run(["bash", str(HARNESS / "down.sh")], capture_output=True, timeout=120)

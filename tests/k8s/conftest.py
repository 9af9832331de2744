"""Fixtures of the k8s tier: the strict PyTorchJob CRD validator and a real kube-apiserver + etcd (built once,
cached outside the repo by scripts/k8s_testbed/build.sh) for the session."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml
from k8s_helpers import PYTORCHJOB_CRD, SHARED, TESTBED, strict_schema


@pytest.fixture(scope="session")
def pytorchjob_validator() -> jsonschema.Draft7Validator:
    if not PYTORCHJOB_CRD.exists():
        pytest.skip(f"PyTorchJob CRD not found at {PYTORCHJOB_CRD} (set GEMMA3_SHARED to the shared/ directory)")
    crd = yaml.load(PYTORCHJOB_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 600 KB
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(strict_schema(copy.deepcopy(version["schema"]["openAPIV3Schema"])))


# ---- the real API server -----------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def kube_apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """etcd + kube-apiserver on loopback with the PyTorchJob CRD installed; yields the kubeconfig path.

    The first run on a machine builds the apiserver (~5 min, cached under ~/.cache/gemma3-launch/k8s); the daemons
    are stopped by PID at the end of the session, whatever happened."""
    if not PYTORCHJOB_CRD.exists():
        pytest.skip(f"shared k8s testbed not found at {SHARED} (set GEMMA3_SHARED)")
    build = subprocess.run([str(TESTBED / "build.sh")], capture_output=True, text=True, timeout=1800)
    if build.returncode != 0:
        pytest.fail(f"building kube-apiserver failed:\n{build.stderr[-3000:]}")
    state = tmp_path_factory.mktemp("k8s-testbed")
    env = {
        **os.environ,
        "ETCD_PORT": str(_free_port()),
        "ETCD_PEER_PORT": str(_free_port()),
        "API_PORT": str(_free_port()),
    }
    try:
        up = subprocess.run([str(TESTBED / "up.sh"), str(state)], capture_output=True, text=True, env=env, timeout=180)
        if up.returncode != 0:
            logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in state.glob("*.log"))
            pytest.fail(f"starting the k8s testbed failed:\n{up.stderr[-3000:]}{logs}")
        yield state / "kubeconfig"
    finally:
        subprocess.run([str(TESTBED / "down.sh"), str(state)], capture_output=True, timeout=60)

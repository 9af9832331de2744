"""Fixtures of the k8s tier: strict validators for the five vendored CRDs and a real kube-apiserver + etcd (built
once, cached outside the repo by scripts/k8s_testbed/build.sh) for the session.

A missing prerequisite FAILS the tier with a one-line reason; GEMMA3_K8S_OFFLINE=1 (tests/README.md) opts out of
the real-API tests explicitly, and they then skip saying so."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml
from k8s_helpers import CRD_FILES, OFFLINE_ENV, TESTBED, strict_schema


def _schemas(kind: str) -> dict[str, dict]:
    path = CRD_FILES[kind]
    if not path.exists():
        pytest.fail(f"vendored CRD missing: {path} (tests/k8s/crds/README.md says where it comes from)")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # up to 800 KB
    group = crd["spec"]["group"]
    return {f"{group}/{v['name']}": v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}


class CrdSchemas:
    """apiVersion+kind -> (strict jsonschema validator, raw schema for the CEL rules)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], tuple[jsonschema.Draft7Validator, dict]] = {}

    def get(self, api_version: str, kind: str) -> tuple[jsonschema.Draft7Validator, dict]:
        if (api_version, kind) not in self._cache:
            schema = _schemas(kind)[api_version]
            validator = jsonschema.Draft7Validator(strict_schema(copy.deepcopy(schema)))
            self._cache[(api_version, kind)] = (validator, schema)
        return self._cache[(api_version, kind)]


@pytest.fixture(scope="session")
def crd_schemas() -> CrdSchemas:
    return CrdSchemas()


@pytest.fixture(scope="session")
def pytorchjob_validator(crd_schemas: CrdSchemas) -> jsonschema.Draft7Validator:
    return crd_schemas.get("kubeflow.org/v1", "PyTorchJob")[0]


# ---- the real API server -----------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def kube_apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """etcd + kube-apiserver on loopback with the five CRDs installed; yields the kubeconfig path.

    The first run on a machine builds the apiserver (~5 min, cached under ~/.cache/gemma3-launch/k8s); the daemons
    are stopped by PID at the end of the session, whatever happened."""
    if os.environ.get(OFFLINE_ENV) == "1":
        pytest.skip(f"{OFFLINE_ENV}=1: the real-API tests were opted out")
    build = subprocess.run([str(TESTBED / "build.sh")], capture_output=True, text=True, timeout=1800)
    if build.returncode != 0:
        reason = (build.stderr.strip().splitlines() or ["no output"])[0]
        pytest.fail(f"k8s tier: building kube-apiserver failed ({reason}); set {OFFLINE_ENV}=1 to opt out")
    state = tmp_path_factory.mktemp("k8s-testbed")
    env = {
        **os.environ,
        "ETCD_PORT": str(_free_port()),
        "ETCD_PEER_PORT": str(_free_port()),
        "API_PORT": str(_free_port()),
        "PYTHON": sys.executable,  # installs the CRDs with this interpreter's kubernetes client
    }
    try:
        up = subprocess.run([str(TESTBED / "up.sh"), str(state)], capture_output=True, text=True, env=env, timeout=300)
        if up.returncode != 0:
            logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in state.glob("*.log"))
            pytest.fail(f"starting the k8s testbed failed:\n{up.stderr[-3000:]}{logs}")
        yield state / "kubeconfig"
    finally:
        subprocess.run([str(TESTBED / "down.sh"), str(state)], capture_output=True, timeout=60)

"""Cluster problems are one line on stderr and exit 1 (no traceback): no kubeconfig, an API that is not there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from k8s_helpers import REPO

pytestmark = pytest.mark.k8s
FEATURES = REPO / "tests" / "k8s" / "specs" / "k8s_features_2node.yaml"
UNREACHABLE = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def _submit(tmp_path: Path, kubeconfig: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env.update(KUBECONFIG=str(kubeconfig), HOME=str(tmp_path), XDG_STATE_HOME=str(tmp_path / "state"))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gemma3_launch.cli",
            "submit",
            str(FEATURES),
            "--cluster",
            "k8s",
            "--set",
            f"runs_dir={tmp_path}/runs",
            "--ephemeral-run-dir-ok",  # the run dir is this machine's: the test is about reaching the cluster
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_kubeconfig_and_not_in_a_cluster(tmp_path: Path) -> None:
    result = _submit(tmp_path, tmp_path / "missing-kubeconfig")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]  # after the warning about the ephemeral run dir
    assert line.startswith("gemma3-launch submit: k8s error: no Kubernetes access")
    assert "Traceback" not in result.stderr


def test_unreachable_api_server(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(UNREACHABLE)
    result = _submit(tmp_path, kubeconfig)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot reach the Kubernetes API at https://127.0.0.1:1" in last and "Traceback" not in result.stderr

"""`validate` / `render --cluster k8s` refuse what the API server or the operator would refuse - one line naming the
field, exit 2, nothing written - and accept what they accept. Each rule is the API server's own grammar
(k8s.io/apimachinery/pkg/util/validation); a property test checks the label-value rule against its regex."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from k8s_helpers import REPO

from gemma3_launch.spec_k8s import label_value_problem, qualified_name_problem

pytestmark = pytest.mark.k8s
FEATURES = REPO / "tests" / "k8s" / "specs" / "k8s_features_2node.yaml"
#: The API server's label-value grammar (validation.IsValidLabelValue), restated for the property test.
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def _cli(tmp_path: Path, command: str, *sets: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    args = [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "gemma3_launch.cli", command, str(FEATURES), "--cluster", "k8s", *args, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )


REFUSED = {
    "name with a leading digit": ("name=1job", "name"),
    "name with an underscore": ("name=my_job", "name"),
    "derived pod name over 63": ("name=" + "a" * 40, "name"),
    "namespace with upper case": ("k8s.namespace=ML", "k8s.namespace"),
    "namespace over 63": ("k8s.namespace=" + "a" * 64, "k8s.namespace"),
    "secret name with a slash": ("k8s.secret_name=a/b", "k8s.secret_name"),
    "priority class with a space": ("k8s.priority_class=high prio", "k8s.priority_class"),
    "service account upper case": ("k8s.service_account=Trainer", "k8s.service_account"),
    "queue with a slash": ("k8s.queue=team/a", "k8s.queue"),
    "claim with upper case": ("k8s.pvcs=[{claim: Data, mount_path: /data}]", "k8s.pvcs"),
    "relative pvc mount path": ("k8s.pvcs=[{claim: data, mount_path: data}]", "k8s.pvcs"),
    "pvc over /dev/shm": ("k8s.pvcs=[{claim: data, mount_path: /dev/shm}]", "k8s.pvcs"),
    "duplicate pvc paths": ("k8s.pvcs=[{claim: a, mount_path: /x}, {claim: b, mount_path: /x/}]", "k8s.pvcs"),
    "host mount over /dev/shm": ("mounts=[{source: /tmp, target: /dev/shm}]", "mounts[0].target"),
    "node selector key with two slashes": ("k8s.node_selector={a/b/c: x}", "k8s.node_selector"),
    "node selector value with a space": ("k8s.node_selector={zone: a b}", "k8s.node_selector"),
    "node selector value over 63": ("k8s.node_selector={zone: " + "a" * 64 + "}", "k8s.node_selector"),
    "toleration key with a space": ("k8s.tolerations=[{key: a b, operator: Exists}]", "k8s.tolerations"),
    "toleration Exists with a value": ("k8s.tolerations=[{key: a, operator: Exists, value: b}]", "k8s.tolerations"),
    "toleration without key not Exists": ("k8s.tolerations=[{operator: Equal, value: b}]", "k8s.tolerations"),
    "label key with a space": ("k8s.labels={team a: x}", "k8s.labels"),
    "label value with a slash": ("k8s.labels={team: a/b}", "k8s.labels"),
    "label under a reserved prefix": ("k8s.labels={gemma3-launch/job-id: x}", "k8s.labels"),
    "annotation key under kueue": ("k8s.annotations={kueue.x-k8s.io/queue-name: x}", "k8s.annotations"),
    "unknown api": ("k8s.api=mpijob", "k8s.api"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_refused_as_the_api_server_would(case: str, tmp_path: Path) -> None:
    value, field = REFUSED[case]
    result = _cli(tmp_path, "validate", value)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if "warning:" not in line]
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*.json"))


ACCEPTED = [
    "k8s.node_selector={topology.kubernetes.io/zone: eu-1a, node.example.com/pool: ''}",
    "k8s.tolerations=[{operator: Exists}]",
    "k8s.tolerations=[{key: example.com/gpu, operator: Equal, value: a.b_c-d, effect: NoSchedule}]",
    "k8s.labels={team: ml, example.com/cost-center: c-42}",
    "k8s.annotations={example.com/note: 'any text, with spaces: and / slashes'}",
    "k8s.secret_name=creds.v2",
    "k8s.api=pytorchjob",
    "k8s.runtime_kind=ClusterTrainingRuntime",
]


@pytest.mark.parametrize("value", ACCEPTED)
def test_accepted_as_the_api_server_would(value: str, tmp_path: Path) -> None:
    result = _cli(tmp_path, "validate", value)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", ["validate", "submit"])
def test_run_dir_outside_a_persistent_volume_is_refused_or_warned(tmp_path: Path, command: str) -> None:
    refused = _cli(tmp_path, command, "runs_dir=./runs")
    assert refused.returncode == 2 and refused.stdout == ""
    (line,) = refused.stderr.strip().splitlines()
    assert "runs_dir: expected an absolute directory under a writable k8s.pvcs mount_path" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "state").exists()  # nothing written
    read_only = _cli(tmp_path, command, "runs_dir=/root/.cache/huggingface/runs")  # a read-only PVC
    assert read_only.returncode == 2 and "runs_dir" in read_only.stderr
    if command == "validate":
        warned = _cli(tmp_path, command, "runs_dir=./runs", extra=("--ephemeral-run-dir-ok",))
        assert warned.returncode == 0 and "warning: runs_dir" in warned.stderr
        assert _cli(tmp_path, command, "runs_dir=/checkpoints/runs").returncode == 0


def test_render_warns_and_records_an_absolute_run_dir(tmp_path: Path) -> None:
    """render only shows the job (a warning); every run dir is absolute, so records never hold ./runs."""
    shown = _cli(tmp_path, "render", "runs_dir=./runs")
    assert shown.returncode == 0 and "warning: runs_dir" in shown.stderr
    assert f"gemma3-launch/run-dir: {tmp_path}/runs/" in shown.stdout


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("aZ09-_./ :é"), max_size=70))
def test_label_value_rule_is_the_api_servers(value: str) -> None:
    valid = len(value) <= 63 and LABEL_VALUE.fullmatch(value) is not None
    assert (label_value_problem(value) is None) == valid


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("aZ09-_./"), min_size=1, max_size=80))
def test_qualified_name_rule_is_the_api_servers(key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    subdomain = re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", prefix)
    valid = (not slash or (bool(prefix) and len(prefix) <= 253 and subdomain is not None)) and (
        len(name) <= 63 and re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", name) is not None
    )
    assert (qualified_name_problem(key) is None) == valid

"""Secret sentinel: a secret's VALUE never reaches a rendered script or manifest, a log line, a job record or the
index. Secrets travel by name (local/SLURM: the submitting environment; Kubernetes: secretKeyRef)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gemma3_launch.cli import main
from gemma3_launch.jobwrap_io import Redactor as _Redactor
from gemma3_launch.jobwrap_io import pump as _pump

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SENTINEL = {"HF_TOKEN": "hf_SENTINELsentinelSENTINELsentinel01", "WANDB_API_KEY": "wandbSENTINEL0123456789abcdef"}


@pytest.fixture
def secret_env(monkeypatch, tmp_path):
    for k, v in SENTINEL.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path


def _assert_clean(text: str, where: str) -> None:
    for v in SENTINEL.values():
        assert v not in text, f"secret value leaked into {where}"
        assert "SENTINEL" not in text, f"part of a secret value leaked into {where}"


@pytest.mark.parametrize("path", sorted((REPO / "jobspecs").glob("*.yaml")), ids=lambda p: p.stem)
def test_no_secret_in_any_render(path, secret_env, capsys):
    for cluster, fmt in (
        ("local", "native"),
        ("slurm", "native"),
        ("slurm", "plan"),
        ("k8s", "native"),
        ("k8s", "helm-values"),
    ):
        args = ["render", str(path), "--cluster", cluster, "--format", fmt, "--set", "resources.gpus_per_node=0"]
        if cluster == "local":
            args += ["--set", "resources.nodes=1"]
        rc = main(args)
        out, err = capsys.readouterr()
        assert rc == 0, err
        _assert_clean(out + err, f"render {cluster}/{fmt} of {path.name}")


def test_job_output_is_redacted(secret_env, capsysbinary):
    """The job wrapper's output pump, on a real subprocess that prints its environment."""
    code = "import os; print('token', os.environ['HF_TOKEN'], end='\\r'); print(os.environ['WANDB_API_KEY'])"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _pump(proc, _Redactor(list(SENTINEL)))
    proc.wait()
    text = capsysbinary.readouterr().out.decode()
    assert text == "token ***\r***\n"
    _assert_clean(text, "job output")

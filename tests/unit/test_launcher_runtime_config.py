"""`validate` / `submit` run the runtime's own config validation on the login node, without torch."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gemma3_launch.cli import main

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "megatron", "numpy", "transformers")


def _spec(tmp_path: Path, overrides: list[str], gpus_per_node: int = 0) -> str:
    lines = "".join(f"  - {o}\n" for o in overrides)
    path = tmp_path / "spec.yaml"
    path.write_text(
        "name: check\nkind: pretrain\nrecipe: gemma3_tiny_pretrain\n"
        f"overrides:\n{lines}"
        f"resources: {{nodes: 1, gpus_per_node: {gpus_per_node}}}\n"
        f"checkpoint: {{dir: {tmp_path / 'ck'}}}\nruns_dir: {tmp_path / 'runs'}\n"
    )
    return str(path)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "launcher"), str(REPO / "runtime")]))


def test_misspelt_override_exits_2_on_the_login_node_without_torch(tmp_path):
    spec = _spec(tmp_path, ["train.trian_iters=10"])
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gemma3_launch.cli", "validate", spec],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    imported = [line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    messages = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    errors = [line for line in messages if "error" in line]
    assert len(errors) == 1, messages
    assert f"{spec}: train step: unknown config key 'train.trian_iters'; did you mean train.train_iters" in errors[0]
    assert "gemma3_runtime.training.run_args" in imported  # the runtime's validation ran ...
    assert not [m for m in imported if m.split(".")[0] in HEAVY]  # ... and pulled no torch, megatron or numpy
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "overrides, gpus, message",
    [
        (["train.global_batch_size=6"], 4, "train.global_batch_size=6 is not divisible by train.micro_batch_size x "),
        (
            ["parallelism.tensor_model_parallel_size=4"],
            2,
            "tensor x pipeline x context = 4 x 1 x 1 = 4 does not divide",
        ),
        (["parallelism.context_parallel_size=4"], 2, "tensor x pipeline x context = 1 x 1 x 4 = 4 does not divide"),
        (["parallelism.context_parallel_size=3"], 3, "data.seq_length: expected a positive multiple of 2 * parallel"),
        (
            ["parallelism.context_parallel_size=2", "parallelism.pipeline_model_parallel_size=2"],
            4,
            "context parallelism does not combine with pipeline parallelism",
        ),
        (["parallelism.tensor_model_parallel_size=8"], 8, "must divide the model's num_attention_heads=4"),
        (["data.seq_length=4096"], 0, "data.seq_length=4096 exceeds the model's max_position_embeddings=256"),
        (["optimizer.lr=fast"], 0, "config key 'optimizer.lr': expected float, got 'fast'"),
    ],
)
def test_validate_and_submit_refuse_what_the_job_would_refuse(tmp_path, monkeypatch, capsys, overrides, gpus, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    spec = _spec(tmp_path, overrides, gpus_per_node=gpus)
    assert main(["validate", spec]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith(f"gemma3-launch validate: error: {spec}: train step: ")
    assert main(["submit", spec, "--cluster", "slurm"]) == 2  # refused before anything reaches sbatch
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # nothing registered or written


def test_a_config_the_runtime_accepts_validates(tmp_path, capsys):
    spec = _spec(tmp_path, ["train.global_batch_size=8", "parallelism.tensor_model_parallel_size=2"], 4)
    assert main(["validate", spec]) == 0
    assert capsys.readouterr().out.startswith("ok: check (pretrain)")


def test_without_the_runtime_one_warning_and_the_check_is_skipped(tmp_path):
    spec = _spec(tmp_path, ["train.trian_iters=10"])
    code = (
        "import sys\nsys.modules['gemma3_runtime'] = None  # a login node with the launcher only\n"
        "from gemma3_launch.cli import main\nsys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "validate", spec], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "gemma3_runtime" in line]
    assert len(warnings) == 1 and "not validated here" in warnings[0]


def test_help_stays_fast_and_never_loads_the_hook():
    code = (
        "import sys\nfrom gemma3_launch.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "sys.exit(3 if 'gemma3_launch.runtime_config' in sys.modules or 'gemma3_runtime' in sys.modules else 0)\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stderr
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 0.5, f"gemma3-launch --help took {cpu:.2f} s of CPU"


def test_the_runtime_modules_the_launcher_imports_never_import_the_launcher():
    """No module-level import cycle: run_args and everything it pulls stay clear of gemma3_launch."""
    code = (
        "import sys\nimport gemma3_runtime.training.run_args\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('gemma3_launch', 'torch', 'numpy'))\n"
        "print(bad)\nsys.exit(3 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(["train.train_iters", "train.global_batch_size", "data.data_paths", "optimizer.lr", "trian.x"]),
    value=st.text(max_size=30),
)
def test_any_override_value_validates_or_exits_2_in_one_line(tmp_path, capsys, key, value):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "check",
                "kind": "pretrain",
                "recipe": "gemma3_tiny_pretrain",
                "overrides": [f"{key}={value}"],
                "resources": {"nodes": 1, "gpus_per_node": 2},
                "checkpoint": {"dir": str(tmp_path / "ck")},
                "runs_dir": str(tmp_path / "runs"),
            }
        )
    )
    code = main(["validate", str(spec), "--cluster", "slurm"])
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" not in line]
    assert code in (0, 2)
    assert (code == 0 and not err) or (code == 2 and len(err) == 1 and err[0].startswith("gemma3-launch validate:"))

"""W&B for a training job, on CPU without network: one run id across a stop and a resume (offline runs read back
from their run files), project / name / tags from the config and the environment, an unreachable service neither
fails nor stalls the job; the progress line and the timestamps of steps.jsonl; `gemma3-runtime --version`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import free_port
from train_helpers import REPO, run_cli_args, runtime_env
from wandb_records import records, run_id_and_steps

pytestmark = pytest.mark.unit


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The runtime's environment without any W&B setting of the machine; W&B's own config and cache in tmp."""
    env = {k: v for k, v in runtime_env().items() if not k.startswith("WANDB_")}
    env.update(WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"), WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"))
    env.update(WANDB_DATA_DIR=str(tmp_path / "wandb-data"))
    env.update(extra)
    return env


def _run(save: Path, iters: int, env: dict[str, str], extra: list[str] = ()) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        run_cli_args(save, iters, list(extra)), capture_output=True, text=True, timeout=600, env=env, cwd=str(REPO)
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _run_files(save: Path) -> list[Path]:
    return sorted(save.glob("wandb/offline-run-*/run-*.wandb"))


def test_stopped_and_resumed_job_is_one_offline_wandb_run(tmp_path):
    save = tmp_path / "run"
    env = _env(tmp_path, WANDB_MODE="offline", WANDB_PROJECT="from-env")
    tags = ["logging.wandb_tags=[smoke, tiny]", "logging.wandb_exp_name=first-try"]
    _run(save, 4, env, ["train.exit_interval=2", *tags])  # the first attempt stops at step 2 (a planned exit)
    _run(save, 4, env, tags)  # the next attempt resumes at step 2

    run_id = (save / "wandb_run_id").read_text().strip()
    files = _run_files(save)
    assert len(files) == 2, files
    (first_id, first_steps), (second_id, second_steps) = (run_id_and_steps(f) for f in files)
    assert first_id == second_id == run_id
    assert first_steps == [1, 2]
    assert second_steps == [3, 4]  # the resumed attempt's history starts right after the resumed step
    run_record = next(r.run for r in records(files[1]) if r.WhichOneof("record_type") == "run")
    assert run_record.project == "from-env"  # WANDB_PROJECT is not overridden by our default
    assert run_record.display_name == "first-try"
    assert list(run_record.tags) == ["smoke", "tiny"]
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert config["train"]["train_iters"] == 4


def test_config_project_wins_and_default_project_applies(tmp_path):
    save = tmp_path / "run"
    _run(save, 1, _env(tmp_path, WANDB_MODE="offline", WANDB_PROJECT="from-env"), ["logging.wandb_project=mine"])
    assert next(r.run for r in records(_run_files(save)[0]) if r.run.run_id).project == "mine"
    other = tmp_path / "other"
    _run(other, 1, _env(tmp_path, WANDB_MODE="offline"))
    run = next(r.run for r in records(_run_files(other)[0]) if r.run.run_id)
    assert run.project == "gemma3-launch" and run.display_name == "gemma3_tiny_pretrain"


def test_unreachable_wandb_service_neither_fails_nor_stalls_the_job(tmp_path):
    started = time.monotonic()
    _run(tmp_path / "plain", 2, _env(tmp_path, WANDB_MODE="disabled"))
    plain_s = time.monotonic() - started

    closed_port = free_port()  # bound, then released: nothing listens there
    env = _env(
        tmp_path,
        WANDB_MODE="online",
        WANDB_BASE_URL=f"http://127.0.0.1:{closed_port}",
        WANDB_API_KEY="0123456789abcdef0123456789abcdef01234567",
    )
    started = time.monotonic()
    proc = _run(tmp_path / "unreachable", 2, env)
    unreachable_s = time.monotonic() - started

    assert unreachable_s < plain_s + 30, (plain_s, unreachable_s)
    output = proc.stdout + proc.stderr
    warnings = [line for line in output.splitlines() if "W&B did not start" in line]
    assert len(warnings) == 1 and "0123456789abcdef" not in output, output[-2000:]
    assert "continuing with an offline W&B run" in warnings[0]
    (run_file,) = _run_files(tmp_path / "unreachable")  # the metrics are kept, for `wandb sync` later
    assert run_id_and_steps(run_file) == ((tmp_path / "unreachable" / "wandb_run_id").read_text().strip(), [1, 2])
    assert not (tmp_path / "plain" / "wandb").exists() and not (tmp_path / "plain" / "wandb_run_id").exists()


def test_progress_lines_and_timestamped_steps(tmp_path):
    before = time.time()
    proc = _run(tmp_path / "run", 3, _env(tmp_path, WANDB_MODE="disabled"))
    lines = [line for line in proc.stdout.splitlines() if "| step " in line]
    assert [line.split("| step ")[1].split(" ")[0] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all(" | elapsed " in line and " | eta " in line and " | loss " in line for line in lines)
    assert lines[-1].split(" | eta ")[1].startswith("0:00:00")
    records_ = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    times = [r["time"] for r in records_]
    assert before <= times[0] <= times[1] <= times[2] <= time.time()
    from datetime import datetime

    assert all(abs(datetime.fromisoformat(r["timestamp"]).timestamp() - r["time"]) < 0.01 for r in records_)


@pytest.mark.parametrize(
    ("environ", "project", "wanted"),
    [
        ({}, None, False),
        ({"WANDB_API_KEY": "k" * 40}, None, True),
        ({"WANDB_MODE": "offline"}, None, True),
        ({"WANDB_MODE": "online"}, None, True),
        ({}, "mine", True),
        ({"WANDB_MODE": "disabled", "WANDB_API_KEY": "k" * 40}, "mine", False),
        ({"WANDB_DISABLED": "true"}, "mine", False),
    ],
)
def test_when_wandb_is_on(environ, project, wanted):
    from gemma3_runtime.training.wandb_run import WandbOptions, wandb_wanted

    assert wandb_wanted(WandbOptions(project=project), environ) is wanted


def test_run_id_is_generated_once_per_save_dir(tmp_path):
    from gemma3_runtime.training.wandb_run import job_run_id

    first = job_run_id(str(tmp_path / "save"))
    assert job_run_id(str(tmp_path / "save")) == first
    assert (tmp_path / "save" / "wandb_run_id").read_text().strip() == first
    assert job_run_id(str(tmp_path / "other")) != first
    assert job_run_id(None) != job_run_id(None)


def test_progress_eta_and_durations():
    from gemma3_runtime.training.metrics import Progress, format_duration

    assert format_duration(0) == "0:00:00"
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(2 * 86400 + 61) == "2-00:01:01"
    progress = Progress(total_iters=100, start_iter=40)
    progress.started -= 10.0  # 10 s for the first 10 steps after the resume
    assert progress.eta_s(50) == pytest.approx(50.0, rel=0.01)
    assert progress.eta_s(50) is None  # no step since the first line: no new rate
    assert "step  50/100" in progress.line(50)


def test_version_is_printed_without_importing_torch():
    code = (
        "import sys\nfrom gemma3_runtime.cli.main import main\ntry:\n    main(['--version'])\n"
        "except SystemExit as exc:\n    assert exc.code == 0\nassert 'torch' not in sys.modules, 'torch imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": runtime_env()["PYTHONPATH"]}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    from gemma3_runtime.cli.main import package_version

    assert proc.stdout.strip() == f"gemma3-runtime {package_version()}"
    assert package_version()[0].isdigit()

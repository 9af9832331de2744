"""docs/quickstart-slurm.md runs on the SLURM testbed: every ```bash block of the page, in order, as one bash script
from the repository root, with the testbed's values in place of the page's settings block (`export SPEC=... IMAGE=...
PARTITION=... CKPT_ROOT=... DATA_ROOT=... RUNS_ROOT=...`) and nothing else changed. The testbed's spec is the tier's
tiny pretrain (the page's 1B LoRA needs 8 GPUs and the model): validate, render, a real sbatch submission through
submitit that runs to completion in the image stand-in, list, status, logs -f until the end, checkpoints."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from doc_blocks import script_with

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "quickstart-slurm.md"
SPEC = "tests/slurm/specs/pretrain_tiny.yaml"
TRAIN_ITERS = 6  # the spec's train.train_iters


def test_slurm_quickstart_runs_on_the_testbed(slurm, tmp_path):
    storage = slurm.root / "quickstart"
    values = {
        "SPEC": SPEC,
        "IMAGE": str(slurm.image),
        "PARTITION": "debug",  # scripts/slurm_testbed/up.sh
        "CKPT_ROOT": str(storage / "checkpoints"),
        "DATA_ROOT": str(storage / "data"),
        "RUNS_ROOT": str(storage / "runs"),
    }
    env = dict(slurm.env, RUN_TAG="quickstart", XDG_STATE_HOME=str(tmp_path / "state"))
    res = subprocess.run(
        ["bash", "-c", script_with(PAGE, values)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, f"stdout:\n{res.stdout[-4000:]}\nstderr:\n{res.stderr[-4000:]}"
    out = res.stdout
    assert out.startswith("gemma3-launch ")  # --version
    assert "ok: slurm-pretrain-tiny (pretrain) on slurm" in out  # validate
    assert "#SBATCH --partition=debug" in out  # render: the sbatch script
    submitted = re.search(r"submitted (slurm-pretrain-tiny-\S+)", out)
    assert submitted, out[-3000:]
    job_id = submitted.group(1)
    assert f"step {TRAIN_ITERS}/{TRAIN_ITERS} |" in out  # logs -f: the training log to its end
    assert re.search(rf"{re.escape(job_id)}\s+COMPLETED", out), out[-3000:]  # status after the end
    assert re.search(rf"progress: step {TRAIN_ITERS}/{TRAIN_ITERS} \(100%\)", out), out[-3000:]
    assert re.search(rf"iter_{TRAIN_ITERS:07d}$", out, re.M), out[-3000:]  # checkpoints
    assert (slurm.root / "ckpt" / "quickstart" / "latest_checkpointed_iteration.txt").read_text().strip() == str(
        TRAIN_ITERS
    )

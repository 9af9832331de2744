"""The job side inside the container, on the real SLURM testbed: a multi-line prompt travels as a run-dir file and
stays one prompt, in a runs_dir with spaces and '%'; the job sees the image stand-in's Python, the environment
allowlist (named secrets in, the login environment out) and one container name for all its steps; `render` is what
ran."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from slurm_helpers import LOGIN_SENTINEL, SENTINEL, assert_render_is_what_ran, pyxis_tasks

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PROMPT = "Line one of the prompt.\nLine two: 100% 'quoted' \"text\" $HOME ${X} `echo no`."


@pytest.fixture(scope="module")
def generate_job(slurm, real_270m_dir):
    job = slurm.submit("generate_multiline.yaml", follow=True)
    assert job["rc"] == 0, job["stdout"][-3000:] + job["stderr"][-2000:]
    return job


def test_multi_line_prompt_generate_in_a_runs_dir_with_spaces_and_percent_completes(slurm, generate_job):
    run_dir = generate_job["run_dir"]
    assert run_dir.parent.name == "odd runs 50%x y" and run_dir.is_dir()
    assert slurm.status(generate_job["job_id"]) == "COMPLETED"
    assert (run_dir / "job.log").exists()  # sbatch's --output kept the literal '%' (no %x expansion)
    prompts = [json.loads(line)["prompt"] for line in (run_dir / "prompt.jsonl").read_text().splitlines()]
    assert prompts == [PROMPT]
    answers = [json.loads(line) for line in (run_dir / "generate.jsonl").read_text().splitlines()]
    assert [a["prompt"] for a in answers] == [PROMPT]  # ONE prompt, byte for byte
    rec = slurm.record(generate_job)
    assert rec["steps"][0]["result"]["answers_file"] == str(run_dir / "generate.jsonl")


def test_the_job_runs_the_image_with_an_environment_allowlist(slurm, generate_job):
    facts = slurm.record(generate_job)["runtime"]
    assert facts["python_executable"].startswith(str(slurm.image) + "/")
    assert facts["python_prefix"] == str(slurm.image)
    submitting_bin = str(Path(sys.executable).parent)
    assert submitting_bin not in facts["path"].split(":") and facts["path"].startswith(f"{slurm.image}/bin:")
    assert LOGIN_SENTINEL not in facts["env_names"]  # the login environment stays out
    assert "HF_TOKEN" in facts["env_names"]  # the named secret reaches the container
    script = (generate_job["run_dir"] / "sbatch.sh").read_text()
    assert submitting_bin not in script and LOGIN_SENTINEL not in script and SENTINEL not in script
    for path in generate_job["run_dir"].rglob("*"):
        if path.is_file():
            assert SENTINEL not in path.read_text(errors="replace"), f"secret value in {path}"


def test_all_steps_of_one_allocation_share_one_container_name(slurm, generate_job):
    tasks = pyxis_tasks(generate_job["slurm_id"])
    assert len(tasks) >= 2  # the job wrapper's step and the generate step
    assert {t["name"] for t in tasks} == {f"gemma3-{generate_job['slurm_id']}-0"}
    assert {t["workdir"] for t in tasks} == {str(slurm.root)}


def test_render_is_what_ran(generate_job):
    assert_render_is_what_ran(generate_job)

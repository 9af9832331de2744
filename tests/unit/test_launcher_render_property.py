"""Property: any text in any string field of a valid spec is either refused in one line (validation, the plan, or a
quoting function - the CLI's exit 2) or survives rendering: every rendered script (local, SLURM) passes `bash -n`,
and the value is carried byte for byte by one word of the script as bash parses it (shlex), or by a run-dir file of
the plan (JobPlan.files: a multi-line or long prompt)."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gemma3_launch.backends import local as local_backend
from gemma3_launch.backends import slurm as slurm_backend
from gemma3_launch.loader import load_spec
from gemma3_launch.plan import Cluster, PlanError, make_plan
from gemma3_launch.quoting import UnsafeValueError

pytestmark = pytest.mark.unit

BASE = {
    "name": "prop",
    "kind": "finetune",
    "model": "/models/gemma-3-270m",
    "recipe": "gemma3_270m_finetune",
    "peft": "lora",
    "overrides": ["train.train_iters=2"],
    "data": {"format": "sft", "paths": ["/data/train.jsonl"]},
    "checkpoint": {"dir": "/ck/run", "pretrained": "/ck/base"},
    "export": {"hf_path": "/out/hf"},
    "generate": {"prompt": "hello", "max_new_tokens": 4, "before": True},
    "env": {"MY_SETTING": "1"},
    "secrets": ["HF_TOKEN"],
    "mounts": [{"source": "/lustre/data", "target": "/data"}],
    "container": {"image": "/images/gemma3.sqsh"},
    "slurm": {"partition": "gpu", "account": "proj", "qos": "normal", "constraint": "h100"},
    "resources": {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 2, "time_limit": "01:00:00"},
    "runs_dir": "/runs",
}
#: every free-text field of the spec (dotted path; digits index lists)
FIELDS = (
    "runs_dir",
    "model",
    "checkpoint.dir",
    "checkpoint.pretrained",
    "export.hf_path",
    "generate.prompt",
    "env.MY_SETTING",
    "data.paths.0",
    "mounts.0.source",
    "mounts.0.target",
    "container.image",
    "slurm.partition",
    "slurm.account",
    "slurm.qos",
    "slurm.constraint",
    "overrides.0",
)


#: fields a local job does not use (it runs on this machine, without a container or a scheduler)
NOT_LOCAL = ("slurm.", "container.", "mounts.")


def _set(spec: dict, dotted: str, value: str) -> dict:
    spec = json.loads(json.dumps(spec))
    *parents, last = dotted.split(".")
    node = spec
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value
    return spec


def _get(spec: object, dotted: str) -> str:
    node = spec
    for key in dotted.split("."):
        node = node[int(key)] if key.isdigit() else (node[key] if isinstance(node, dict) else getattr(node, key))
    return node  # type: ignore[return-value]


def _words(script: str) -> list[str]:
    """Every word bash would see in the script's command lines, and in the command lines its comments show."""
    words: list[str] = []
    for line in script.split("\n"):  # bash's line ends only (str.splitlines also cuts at \x1c-\x1e)
        text = line
        for prefix in ("#SBATCH ", "#     "):
            if line.startswith(prefix):
                text = line[len(prefix) :]
        if text.startswith("#"):
            continue
        words += shlex.split(text)
    return words


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), text=st.text(min_size=1, max_size=40))
def test_any_text_is_refused_or_rendered_byte_for_byte(tmp_path, field, text):
    path = tmp_path / "spec.yaml"
    # `$` is the loader's expansion character; `$$` is its literal dollar
    path.write_text(yaml.safe_dump(_set(BASE, field, text.replace("$", "$$")), allow_unicode=True), encoding="utf-8")
    try:
        spec = load_spec(path, environ={})
    except Exception as exc:  # the loader's one-line refusal (SpecError); anything else is a bug
        assert type(exc).__name__ == "SpecError", repr(exc)
        assert "\n" not in str(exc)
        return
    value = str(_get(spec, field))
    for backend in (local_backend, slurm_backend):
        name = backend.__name__.rsplit(".", 1)[1]
        try:
            plan = make_plan(spec, Cluster(name, workdir="/home/u/work dir"), job_id="prop-1")  # type: ignore[arg-type]
            script = backend.render(plan)
        except (PlanError, UnsafeValueError) as exc:
            assert "\n" not in str(exc)
            continue
        assert subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True).returncode == 0, script
        if name == "local" and field.startswith(NOT_LOCAL):
            continue
        in_files = any(value == json.loads(t).get("prompt") for t in plan.files.values())
        # list values travel JSON-encoded inside one override word (`data.data_paths=[...]`): JSON is YAML, so the
        # runtime reads them back exactly
        forms = (value, json.dumps(value)[1:-1])
        assert in_files or any(f in word for word in _words(script) for f in forms), (field, value, script)

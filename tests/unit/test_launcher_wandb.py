"""Spec `wandb:` mapped by the plan to the runtime's logging.wandb_* overrides of the train step."""

from __future__ import annotations

import json

import pytest

from gemma3_launch.loader import SpecError, validate
from gemma3_launch.plan import Cluster, make_plan

pytestmark = pytest.mark.unit


def _plan(**over):
    base = {"name": "wb-run", "kind": "pretrain", "recipe": "gemma3_tiny_pretrain", "checkpoint": {"dir": "/ck"}}
    return make_plan(validate({**base, **over}), Cluster("slurm"))


def _train(plan) -> tuple[str, ...]:
    return next(s for s in plan.steps if s.name == "train").args


def test_every_wandb_field_maps_to_its_runtime_override():
    wandb = {"project": "p", "entity": "team", "name": "run-1", "tags": ["a", "b c"]}
    args = _train(_plan(wandb=wandb))
    for want in (
        'logging.wandb_project="p"',
        'logging.wandb_entity="team"',
        'logging.wandb_exp_name="run-1"',
        f"logging.wandb_tags={json.dumps(['a', 'b c'])}",
    ):
        assert want in args


def test_the_run_name_defaults_to_the_spec_name_and_unset_fields_stay_unset():
    args = _train(_plan(wandb={}))
    assert 'logging.wandb_exp_name="wb-run"' in args
    assert not any(a.startswith(("logging.wandb_project", "logging.wandb_entity", "logging.wandb_tags")) for a in args)


def test_no_wandb_section_adds_no_wandb_override():
    assert not any(a.startswith("logging.wandb_") for a in _train(_plan()))


def test_user_overrides_come_after_and_win():
    args = _train(_plan(wandb={"project": "p"}, overrides=["logging.wandb_project=q"]))
    assert args.index("logging.wandb_project=q") > args.index('logging.wandb_project="p"')


def test_the_key_stays_a_secret_and_mode_project_may_be_env():
    plan = _plan(
        wandb={"project": "p"}, secrets=["WANDB_API_KEY"], env={"WANDB_MODE": "offline", "WANDB_ENTITY": "team"}
    )
    assert "WANDB_API_KEY" in plan.secrets and "WANDB_API_KEY" not in plan.env
    assert plan.env["WANDB_MODE"] == "offline" and plan.env["WANDB_ENTITY"] == "team"


def test_unknown_wandb_fields_are_refused():
    with pytest.raises(SpecError):
        _plan(wandb={"api_key": "x"})


def test_validate_runs_the_runtime_checks_on_a_wandb_spec(tmp_path, capsys):
    from pathlib import Path

    from gemma3_launch.cli import main

    repo = Path(__file__).resolve().parents[2]
    text = (repo / "jobspecs" / "cpu_tiny_pretrain.yaml").read_text()
    path = tmp_path / "wb.yaml"
    path.write_text(text + '\nwandb: {project: p, entity: team, tags: [a, "1"]}\nsecrets: [WANDB_API_KEY]\n')
    assert main(["validate", str(path), "--cluster", "slurm"]) == 0, capsys.readouterr().err

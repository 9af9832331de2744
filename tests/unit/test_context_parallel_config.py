"""`parallelism.context_parallel_size`: the config checks (one line naming the field), the data-parallel size with
CP in it, and the split rule shared by the torch-free validation and the zigzag split itself."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.parallel.context_rules import split_problem
from gemma3_runtime.parallel.context_split import validate_split
from gemma3_runtime.training import recipes
from gemma3_runtime.training.config import ConfigContainer, apply_overrides
from gemma3_runtime.training.recipes import RECIPES
from gemma3_runtime.training.validate import validate

pytestmark = pytest.mark.unit


def _tiny(*overrides: str) -> ConfigContainer:
    """The tiny pretrain recipe: 4 heads, 2 KV heads, max 256 positions, seq_length 64 unless overridden."""
    cfg = recipes.gemma3_tiny_pretrain_config(dir="/ckpt")
    return apply_overrides(cfg, ["data.seq_length=64", *overrides])


@pytest.mark.parametrize(
    "overrides, world_size, message",
    [
        (
            ["parallelism.context_parallel_size=0"],
            1,
            "parallelism.context_parallel_size=0: expected a positive integer",
        ),
        (["parallelism.context_parallel_size=-2"], None, "parallelism.context_parallel_size=-2: expected a positive"),
        (
            ["parallelism.context_parallel_size=4", "data.seq_length=60"],
            4,
            "data.seq_length: expected a positive multiple of 2 * parallelism.context_parallel_size = 8, got 60",
        ),
        (
            ["parallelism.context_parallel_size=3", "data.seq_length=64"],
            None,
            "data.seq_length: expected a positive multiple of 2 * parallelism.context_parallel_size = 6, got 64",
        ),
        (
            ["parallelism.context_parallel_size=2", "parallelism.pipeline_model_parallel_size=2"],
            4,
            "parallelism.context_parallel_size=2 with parallelism.pipeline_model_parallel_size=2: context parallelism "
            "does not combine with pipeline parallelism",
        ),
        (
            ["parallelism.context_parallel_size=2", "parallelism.tensor_model_parallel_size=2"],
            6,
            "parallelism: tensor x pipeline x context = 2 x 1 x 2 = 4 does not divide the world size 6",
        ),
        (["parallelism.context_parallel_size=4"], 2, "tensor x pipeline x context = 1 x 1 x 4 = 4 does not divide"),
        (["parallelism.context_parallel_size=2"], 16, "data-parallel size = 1 x 8 = 8"),
        (["parallelism.context_parallel_size=two"], 1, "parallelism.context_parallel_size"),
    ],
)
def test_context_parallel_problems_name_the_field_in_one_line(overrides, world_size, message):
    with pytest.raises(UserInputError) as info:
        validate(_tiny(*overrides), world_size=world_size)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_context_parallel_takes_its_share_of_the_world():
    """DP = world / (TP x PP x CP): CP ranks share one sequence, so they are not data-parallel replicas."""
    assert validate(_tiny("parallelism.context_parallel_size=2"), world_size=2) == 1
    assert validate(_tiny("parallelism.context_parallel_size=2", "train.global_batch_size=8"), world_size=8) == 4
    both = _tiny("parallelism.context_parallel_size=2", "parallelism.tensor_model_parallel_size=2")
    assert validate(both, world_size=4) == 1


def test_an_odd_sequence_is_fine_without_context_parallelism():
    """The 2*CP-chunk rule applies only when the sequence is split (CP > 1)."""
    assert validate(_tiny("data.seq_length=63"), world_size=1) == 1


def test_the_override_reaches_the_field():
    cfg = _tiny("parallelism.context_parallel_size=4")
    assert cfg.parallelism.context_parallel_size == 4
    assert ConfigContainer().parallelism.context_parallel_size == 1


@settings(max_examples=300, deadline=None)
@given(seq_len=st.integers(-4, 600), cp=st.integers(-2, 20))
def test_the_validation_and_the_split_share_one_rule(seq_len, cp):
    """validate_split (torch side, at run time) and the config check (torch-free) accept exactly the same pairs."""
    problem = split_problem(seq_len, cp)
    try:
        validate_split(seq_len, cp)
    except ValueError as exc:
        assert problem == str(exc)
    else:
        assert problem is None
        assert seq_len > 0 and seq_len % (2 * cp) == 0


@settings(max_examples=300, deadline=None)
@given(
    seq_len=st.integers(1, 256),
    cp=st.integers(1, 8),
    tp=st.sampled_from([1, 2, 4]),
    pp=st.integers(1, 4),
    world=st.integers(1, 64),
    text=st.sampled_from(["", "x", "1.5", "-1", "0", "[2]", "null"]),
)
def test_any_parallel_layout_is_accepted_consistently_or_refused_in_one_line(seq_len, cp, tp, pp, world, text):
    overrides = [
        f"data.seq_length={seq_len}",
        f"parallelism.context_parallel_size={text or cp}",
        f"parallelism.tensor_model_parallel_size={tp}",
        f"parallelism.pipeline_model_parallel_size={pp}",
        "train.global_batch_size=64",
    ]
    try:
        cfg = _tiny(*overrides)
        dp = validate(cfg, world_size=world)
    except UserInputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert cfg.parallelism.context_parallel_size == cp and not text
    assert dp * tp * pp * cp == world
    assert cp == 1 or (pp == 1 and seq_len % (2 * cp) == 0)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_takes_the_context_parallel_size(name):
    kwargs = {} if "pretrain" in name else {"pretrained_checkpoint": "/base", "peft": "lora"}
    cfg = RECIPES[name](context_parallel_size=2, pipeline_model_parallel_size=1, **kwargs)
    assert cfg.parallelism.context_parallel_size == 2
    assert RECIPES[name](**kwargs).parallelism.context_parallel_size == 1


def test_the_4b_lora_at_128k_tokens_validates_on_two_nodes_of_eight():
    """The long-context setting of jobspecs/longctx_4b_lora.yaml: CP=8 x DP=2 on 16 GPUs."""
    cfg = recipes.gemma3_4b_finetune_config(
        pretrained_checkpoint="/base", peft="lora", seq_length=131072, context_parallel_size=8, global_batch_size=16
    )
    assert validate(cfg, world_size=16) == 2
    with pytest.raises(UserInputError, match="tensor x pipeline x context = 1 x 1 x 8 = 8 does not divide"):
        validate(cfg, world_size=12)
    with pytest.raises(UserInputError, match="max_position_embeddings=131072"):
        validate(apply_overrides(cfg, ["data.seq_length=262144"]), world_size=16)

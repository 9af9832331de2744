"""The low-rank adapter (LoRA, optionally DoRA) that sits inside one tensor-parallel linear.

Parameter names follow docs/CONTRACTS.md: `adapter.linear_in.weight` (A, [r, in]), `adapter.linear_out.weight`
(B, [out, r]) and, for DoRA, `adapter.weight_magnitude` ([out]).

Tensor parallelism mirrors the wrapped linear so the local update `s * B_local @ A_local` has exactly the shape and
row/column ownership of the local base weight; that is what makes the in-place merge exact and communication-free:
- column-parallel (output rows sharded): A replicated, B and the magnitude sharded like the output rows.
  `h = A x` is identical on every rank; its gradient is all-reduced (each rank only sees its rows of B).
- row-parallel (input columns sharded): A sharded like the input, B and the magnitude replicated.
  `h = sum_ranks A_local x_local` is all-reduced in the forward pass, exactly like the base linear's output.
DoRA's row norm ||W0 + sBA|| is local for column-parallel rows and all-reduced (sum of squares) for row-parallel.
"""

from __future__ import annotations

import math
import zlib
from typing import Literal

import torch
import torch.distributed as dist
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
)
from torch import nn

from gemma3_runtime.peft.config import PeftConfig

ParallelMode = Literal["column", "row"]


def _tp_size_rank(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if group is None or not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def _mark_tp(param: torch.Tensor, is_parallel: bool, dim: int) -> None:
    """Megatron's TP attributes: grad-norm and checkpoint helpers use them to count replicated params once."""
    param.tensor_model_parallel = is_parallel
    param.partition_dim = dim if is_parallel else -1
    param.partition_stride = 1


class LowRankAdapter(nn.Module):
    """`y = g * (W0 x + s B A drop(x))` with `g = m / ||W0 + sBA||_row` for DoRA and `g = 1` for LoRA.

    The module is called with the wrapped linear's input, its (pre-post-norm) output and its weight, so it can
    implement both LoRA (an additive update) and DoRA (a per-row rescaling of the whole output).
    """

    def __init__(
        self,
        cfg: PeftConfig,
        *,
        full_in_features: int,
        full_out_features: int,
        parallel_mode: ParallelMode,
        tp_group: dist.ProcessGroup | None,
        base_weight: torch.Tensor,
        init_key: str,
    ) -> None:
        super().__init__()
        self.kind = cfg.kind
        self.rank = cfg.rank
        self.alpha = float(cfg.alpha)
        self.scale = cfg.scale
        self.parallel_mode: ParallelMode = parallel_mode
        self.tp_group = tp_group
        tp_size, tp_rank = _tp_size_rank(tp_group)
        self.tp_size = tp_size
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        #: the fused add as the Triton op `gemma3::lora_up_add` (perf/lora_triton.py); set by gemma3_runtime.perf
        self.triton_add = False

        local_out, local_in = base_weight.shape
        factory = dict(dtype=base_weight.dtype, device=base_weight.device)
        full_a = self._initial_a(cfg, full_in_features, init_key).to(**factory)
        self.linear_in = nn.Linear(local_in, cfg.rank, bias=False, **factory)
        self.linear_out = nn.Linear(cfg.rank, local_out, bias=False, **factory)
        with torch.no_grad():
            if parallel_mode == "row":
                self.linear_in.weight.copy_(full_a.chunk(tp_size, dim=1)[tp_rank])
            else:
                self.linear_in.weight.copy_(full_a)
            self.linear_out.weight.zero_()
        _mark_tp(self.linear_in.weight, parallel_mode == "row", 1)
        _mark_tp(self.linear_out.weight, parallel_mode == "column", 0)

        if self.kind == "dora":
            self.weight_magnitude = nn.Parameter(torch.empty(local_out, **factory))
            _mark_tp(self.weight_magnitude, parallel_mode == "column", 0)
            self.reset_magnitude(base_weight)
        else:
            self.register_parameter("weight_magnitude", None)
        self.full_in_features = full_in_features
        self.full_out_features = full_out_features

    @staticmethod
    def _initial_a(cfg: PeftConfig, full_in: int, init_key: str) -> torch.Tensor:
        """Draw the FULL A from a generator keyed by (seed, parameter name): independent of TP size and rank."""
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + zlib.crc32(init_key.encode()))
        a = torch.empty(cfg.rank, full_in, dtype=torch.float32)
        if cfg.init == "xavier":
            nn.init.xavier_uniform_(a, generator=gen)
        else:  # HF PEFT's default: kaiming-uniform with a = sqrt(5)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)
        return a

    # --- the math ---------------------------------------------------------------------------------------------

    def delta_weight(self) -> torch.Tensor:
        """`s * B @ A` for the local shard, in fp32 (same shape as the local base weight)."""
        return self.scale * (self.linear_out.weight.float() @ self.linear_in.weight.float())

    def row_norm(self, base_weight: torch.Tensor) -> torch.Tensor:
        """||W0 + sBA|| per output row (fp32), summed over TP ranks for row-parallel shards. Not differentiated:
        DoRA (Liu et al. 2024, sec. 4.3) and HF PEFT treat it as a constant, which saves memory and matches PEFT."""
        with torch.no_grad():
            sq = (base_weight.float() + self.delta_weight()).pow(2).sum(dim=1)
            if self.parallel_mode == "row" and self.tp_size > 1:
                dist.all_reduce(sq, group=self.tp_group)
            return sq.sqrt()

    def reset_magnitude(self, base_weight: torch.Tensor) -> None:
        """m := ||W0 + sBA||_row, so a fresh DoRA adapter is the identity. Call after the base weights are loaded."""
        if self.weight_magnitude is None:
            return
        with torch.no_grad():
            self.weight_magnitude.copy_(self.row_norm(base_weight).to(self.weight_magnitude.dtype))

    def _low_rank_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """`h = A drop(x)` ([..., r]) with the TP reductions that make it exact."""
        h = self.linear_in(self.dropout(x))
        if self.tp_size > 1:
            if self.parallel_mode == "column":
                h = copy_to_tensor_model_parallel_region(h, group=self.tp_group)
            else:
                h = reduce_from_tensor_model_parallel_region(h, group=self.tp_group)
        return h

    def low_rank_update(self, x: torch.Tensor) -> torch.Tensor:
        """`s * B A drop(x)` for this rank's output slice."""
        return self.linear_out(self._low_rank_hidden(x)) * self.scale

    def forward(self, x: torch.Tensor, base_out: torch.Tensor, base_weight: torch.Tensor) -> torch.Tensor:
        if self.weight_magnitude is None:
            # `base_out + h (sB)^T` as ONE GEMM that adds base_out in its epilogue (beta = 1): the scale moves onto the
            # [out, r] weight, so neither the forward add nor the backward's `grad * s` is a separate pass over the
            # [tokens, out] activations (docs/PERFORMANCE.md).
            h = self._low_rank_hidden(x)
            scaled_b = self.linear_out.weight * self.scale
            base2, h2 = base_out.reshape(-1, base_out.shape[-1]), h.reshape(-1, h.shape[-1])
            if self.triton_add:  # same sum without aten's copy of base_out into addmm's output (perf/lora_triton.py)
                out = torch.ops.gemma3.lora_up_add(base2, h2, scaled_b)
            else:
                out = torch.addmm(base2, h2, scaled_b.t())
            return out.view(base_out.shape)
        out = base_out + self.low_rank_update(x)
        gain = self.weight_magnitude / self.row_norm(base_weight).to(self.weight_magnitude.dtype)
        return out * gain.to(out.dtype)

    def merged_weight(self, base_weight: torch.Tensor) -> torch.Tensor:
        """The local weight that computes exactly what (base linear + this adapter) computes, in fp32."""
        merged = base_weight.float() + self.delta_weight()
        if self.weight_magnitude is not None:
            merged = merged * (self.weight_magnitude.float() / self.row_norm(base_weight))[:, None]
        return merged

    def extra_repr(self) -> str:
        return f"kind={self.kind}, rank={self.rank}, alpha={self.alpha}, parallel_mode={self.parallel_mode}"

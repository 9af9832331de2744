"""`Gemma3ModelProvider`: Gemma3Config + parallelism/dtype -> megatron TransformerConfig -> Gemma3Model(s).

The API follows Megatron-Bridge's provider (the seed snippet): set `tensor_model_parallel_size` /
`pipeline_model_parallel_size`, `finalize()`, then `provide_distributed_model(wrap_with_ddp=False)`, which creates a
1-process group (or joins torchrun's) when none exists. Hooks registered with `register_pre_wrap_hook` run on the
built model list before any DDP wrapping (the bridge loads HF weights there).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import Gemma3Config

log = logging.getLogger("gemma3_runtime.model")

PreWrapHook = Callable[[list], "list | None"]


@dataclass
class Gemma3ModelProvider:
    config: Gemma3Config
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    #: each CP rank holds a zigzag share of every sequence (docs/CONTEXT_PARALLEL.md); parameters are replicated
    context_parallel_size: int = 1
    sequence_parallel: bool = False
    params_dtype: torch.dtype = torch.float32
    attention_kernel: str = "sdpa"  # "sdpa" | "flex" | "eager"
    device: str | None = None  # "cpu" | "cuda" | None (= cuda when available; see platform.select_device)
    seed: int = 1234
    perform_initialization: bool = True
    init_method_std: float | None = None  # default: config.initializer_range
    recompute_granularity: str | None = None  # None | "full" | "selective"
    recompute_method: str | None = None
    recompute_num_layers: int | None = None
    transformer_overrides: dict[str, Any] = field(default_factory=dict)  # any other TransformerConfig fields
    _pre_wrap_hooks: list[PreWrapHook] = field(default_factory=list, repr=False)
    _finalized: bool = field(default=False, repr=False)

    @classmethod
    def from_config(cls, config: Gemma3Config, **fields: Any) -> Gemma3ModelProvider:
        return cls(config=config, **fields)

    # ---- validation -------------------------------------------------------------------------------------------
    def finalize(self) -> Gemma3ModelProvider:
        """Check the parallel layout against the architecture (clear errors instead of megatron asserts)."""
        from .attention import KERNELS

        cfg, tp, pp = self.config, self.tensor_model_parallel_size, self.pipeline_model_parallel_size
        if tp < 1 or pp < 1:
            raise ValueError(f"tensor_model_parallel_size={tp}, pipeline_model_parallel_size={pp}: expected >= 1")
        if cfg.num_attention_heads % tp:
            raise ValueError(
                f"tensor_model_parallel_size={tp} must divide num_attention_heads={cfg.num_attention_heads}"
            )
        if cfg.num_kv_heads % tp and tp % cfg.num_kv_heads:
            raise ValueError(
                f"tensor_model_parallel_size={tp} and num_kv_heads={cfg.num_kv_heads}: one must divide the other"
            )
        if cfg.intermediate_size % tp:
            raise ValueError(f"tensor_model_parallel_size={tp} must divide intermediate_size={cfg.intermediate_size}")
        if cfg.padded_vocab_size % tp:
            raise ValueError(f"tensor_model_parallel_size={tp} must divide the padded vocab {cfg.padded_vocab_size}")
        if pp > cfg.num_layers:
            raise ValueError(f"pipeline_model_parallel_size={pp} exceeds num_layers={cfg.num_layers}")
        cp = self.context_parallel_size
        if cp < 1:
            raise ValueError(f"context_parallel_size={cp}: expected >= 1")
        if cp > 1 and pp > 1:
            raise ValueError(f"context_parallel_size={cp} with pipeline_model_parallel_size={pp}: not supported")
        if self.sequence_parallel and tp == 1:
            raise ValueError("sequence_parallel needs tensor_model_parallel_size > 1")
        if self.attention_kernel not in KERNELS:
            raise ValueError(f"attention_kernel={self.attention_kernel!r}, expected one of {KERNELS}")
        if self.params_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"params_dtype={self.params_dtype}, expected torch.float32, bfloat16 or float16")
        self._finalized = True
        return self

    # ---- building -----------------------------------------------------------------------------------------------
    def transformer_config(self):
        """The megatron TransformerConfig (a Gemma3TransformerConfig) for this provider."""
        from .transformer_config import build_transformer_config

        on_cpu = self._device().type == "cpu"
        values: dict[str, Any] = dict(
            tensor_model_parallel_size=self.tensor_model_parallel_size,
            pipeline_model_parallel_size=self.pipeline_model_parallel_size,
            context_parallel_size=self.context_parallel_size,
            sequence_parallel=self.sequence_parallel,
            params_dtype=self.params_dtype,
            use_cpu_initialization=on_cpu,
            perform_initialization=self.perform_initialization,
            gemma3_attention_kernel=self.attention_kernel,
            recompute_granularity=self.recompute_granularity,
            recompute_method=self.recompute_method,
            recompute_num_layers=self.recompute_num_layers,
        )
        if self.init_method_std is not None:
            values["init_method_std"] = self.init_method_std
        values.update(self.transformer_overrides)
        return build_transformer_config(self.config, **values)

    def provide(self, pre_process: bool | None = None, post_process: bool | None = None, vp_stage: int | None = None):
        """One Gemma3Model for this rank's pipeline stage (parallel state must be initialised)."""
        from megatron.core import parallel_state

        from .gemma3_model import Gemma3Model
        from .layer_spec import gemma3_block_spec

        if not self._finalized:
            self.finalize()
        if pre_process is None:
            pre_process = parallel_state.is_pipeline_first_stage()
        if post_process is None:
            post_process = parallel_state.is_pipeline_last_stage()
        tconfig = self.transformer_config()
        cfg = self.config
        return Gemma3Model(
            config=tconfig,
            transformer_layer_spec=gemma3_block_spec(tconfig, vp_stage=vp_stage),
            vocab_size=cfg.padded_vocab_size,
            hf_vocab_size=cfg.vocab_size,
            max_sequence_length=cfg.max_position_embeddings,
            rope_local_base=cfg.rope_local_base,
            rope_global_base=cfg.rope_global_base,
            rope_global_scaling_factor=cfg.rope_global_scaling_factor,
            pre_process=pre_process,
            post_process=post_process,
            vp_stage=vp_stage,
        )

    def register_pre_wrap_hook(self, hook: PreWrapHook, prepend: bool = False) -> None:
        """`hook(models) -> models | None` runs after building, before DDP wrapping (e.g. weight loading)."""
        if prepend:
            self._pre_wrap_hooks.insert(0, hook)
        else:
            self._pre_wrap_hooks.append(hook)

    def provide_distributed_model(self, wrap_with_ddp: bool = False, ddp_config=None, **_ignored) -> list:
        """Initialise distributed state if needed, build this rank's model, run pre-wrap hooks, optionally wrap
        in megatron DDP. Returns a list (one entry: virtual pipeline stages are not supported)."""
        from .. import platform

        if not self._finalized:
            self.finalize()
        device = self._device()
        platform.init_distributed(
            device,
            self.tensor_model_parallel_size,
            self.pipeline_model_parallel_size,
            seed=self.seed,
            cp=self.context_parallel_size,
        )
        model = self.provide()
        model = model.to(device)
        # zero rows beyond the HF vocab (both tied copies under PP): padded logits are masked anyway
        _zero_padded_vocab_rows(model, self.config.vocab_size)
        models = [model]
        for hook in self._pre_wrap_hooks:
            result = hook(models)
            if result is not None:
                models = result
        if wrap_with_ddp:
            from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

            ddp_config = ddp_config or DistributedDataParallelConfig()
            models = [DistributedDataParallel(config=m.config, ddp_config=ddp_config, module=m) for m in models]
        return models

    def _device(self) -> torch.device:
        from .. import platform

        state = platform.current()
        if state is not None and self.device in (None, state.device.type):
            return state.device
        return platform.select_device(self.device)

    def replace(self, **changes: Any) -> Gemma3ModelProvider:
        return dataclasses.replace(self, **changes)


def _zero_padded_vocab_rows(model, hf_vocab_size: int) -> None:
    weight = model.shared_embedding_or_output_weight()
    if weight is None:  # a middle pipeline stage
        return
    from megatron.core import parallel_state

    start = weight.shape[0] * parallel_state.get_tensor_model_parallel_rank()
    first_pad = max(hf_vocab_size - start, 0)
    if first_pad < weight.shape[0]:
        with torch.no_grad():
            weight[first_pad:].zero_()

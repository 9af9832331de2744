"""A built Megatron Gemma 3 model -> a Megatron checkpoint directory (weights only; `convert import` writes these).

Reading one back is `gemma3_runtime.loader.load_model`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from gemma3_runtime.checkpoint.io import save_checkpoint
from gemma3_runtime.loader import sharded_model_state
from gemma3_runtime.model.config import Gemma3Config


def save_megatron_model(
    models: Sequence[nn.Module],
    save_dir: str | Path,
    config: Gemma3Config,
    tokenizer_dir: str | Path | None = None,
    iteration: int = 0,
    extra_run_config: dict[str, Any] | None = None,
) -> Path:
    """Model weights only (no optimizer / RNG state), as `iter_NNNNNNN` with the commit protocol; collective."""
    run_config = {"model": config.to_dict(), **(extra_run_config or {})}
    return save_checkpoint(save_dir, iteration, sharded_model_state(models), run_config, tokenizer_dir)

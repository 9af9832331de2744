"""Recipes: explicit functions that return a ConfigContainer for one Gemma 3 size and one kind of job.

`gemma3_<size>_pretrain_config(...)` (pretrain.py) and `gemma3_<size>_finetune_config(..., peft=None|"lora"|"dora")`
(finetune.py) for the sizes tiny, 270m, 1b, 4b, 12b and 27b, over the shared builders in common.py. Each function's
docstring lists every switch. `get_recipe(name)` maps the names `gemma3-runtime run --recipe` and the launcher's
spec accept (gemma3_launch.contract.KNOWN_RECIPES, without the `_config` suffix) to them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.training.config import ConfigContainer
from gemma3_runtime.training.recipes.common import BUNDLED_SFT_DATASET, make_peft_config, tiny_model_config
from gemma3_runtime.training.recipes.finetune import (
    gemma3_1b_finetune_config,
    gemma3_4b_finetune_config,
    gemma3_12b_finetune_config,
    gemma3_27b_finetune_config,
    gemma3_270m_finetune_config,
    gemma3_tiny_finetune_config,
)
from gemma3_runtime.training.recipes.pretrain import (
    gemma3_1b_pretrain_config,
    gemma3_4b_pretrain_config,
    gemma3_12b_pretrain_config,
    gemma3_27b_pretrain_config,
    gemma3_270m_pretrain_config,
    gemma3_tiny_pretrain_config,
)

#: name -> recipe function (what `gemma3-runtime run --recipe NAME` looks up)
RECIPES: dict[str, Callable[..., ConfigContainer]] = {
    "gemma3_tiny_pretrain_config": gemma3_tiny_pretrain_config,
    "gemma3_tiny_finetune_config": gemma3_tiny_finetune_config,
    "gemma3_270m_pretrain_config": gemma3_270m_pretrain_config,
    "gemma3_270m_finetune_config": gemma3_270m_finetune_config,
    "gemma3_1b_pretrain_config": gemma3_1b_pretrain_config,
    "gemma3_1b_finetune_config": gemma3_1b_finetune_config,
    "gemma3_4b_pretrain_config": gemma3_4b_pretrain_config,
    "gemma3_4b_finetune_config": gemma3_4b_finetune_config,
    "gemma3_12b_pretrain_config": gemma3_12b_pretrain_config,
    "gemma3_12b_finetune_config": gemma3_12b_finetune_config,
    "gemma3_27b_pretrain_config": gemma3_27b_pretrain_config,
    "gemma3_27b_finetune_config": gemma3_27b_finetune_config,
}

__all__ = ["BUNDLED_SFT_DATASET", "RECIPES", "get_recipe", "is_pretrain_recipe", "make_peft_config", *RECIPES]
__all__ += ["tiny_model_config"]


def get_recipe(name: str) -> Callable[..., ConfigContainer]:
    """Look a recipe up by its function name (the `_config` suffix is optional)."""
    key = name if name.endswith("_config") else f"{name}_config"
    if key in RECIPES:
        return RECIPES[key]
    near = difflib.get_close_matches(key, list(RECIPES), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; known recipes: {', '.join(RECIPES)}"
    raise UserInputError(f"--recipe {name!r} is unknown{hint}")


def is_pretrain_recipe(name: str) -> bool:
    return get_recipe(name).__name__.endswith("_pretrain_config")

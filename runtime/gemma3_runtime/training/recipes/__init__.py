"""Recipes: explicit functions that return a ConfigContainer for one Gemma 3 size and one kind of job.

One module per size (gemma3_tiny, gemma3_270m, gemma3_1b, gemma3_4b, gemma3_12b, gemma3_27b), each holding
`gemma3_<size>_pretrain_config(...)` and `gemma3_<size>_finetune_config(..., peft=None|"lora"|"dora")` over the shared
builders in common.py. Each function's docstring lists every switch; every value can still be changed afterwards
(`cfg.train.train_iters = 10`) or by a `key=value` override. `get_recipe(name)` maps the names
`gemma3-runtime run --recipe` and the launcher's spec accept (gemma3_launch.contract.KNOWN_RECIPES, without the
`_config` suffix) to them.

- Pretraining: sequence length 4096 (the anchor pretrains at 32768); tensor/pipeline sizes let the model, gradients
  and optimizer state fit 80 GB GPUs.
- Finetuning: full SFT with GBS 64, LR 5e-6 and megatron's distributed optimizer; LoRA/DoRA (`peft="lora"` /
  `"dora"`) with GBS 128, LR 1e-4, rank 8, alpha 16 on all four linears. The 270M finetune uses sequences of 256 so
  that it runs on a CPU in minutes.
- Long context (Gemma 3 4B/12B/27B take 131,072 tokens, the 1B 32,768): raise `seq_length` and split each sequence
  over `context_parallel_size` GPUs (a multiple of 2 x CP tokens; no pipeline parallelism alongside).
  jobspecs/longctx_4b_lora.yaml runs the 4B LoRA at 131,072 tokens with CP=8 on 2 nodes x 8 GPUs;
  docs/CONTEXT_PARALLEL.md gives the memory per CP size.

    from gemma3_runtime.training.recipes import gemma3_1b_finetune_config, gemma3_1b_pretrain_config
    cfg = gemma3_1b_pretrain_config(name="my_run", data_paths=["/data/corpus_text_document"], train_iters=1000)
    cfg = gemma3_1b_finetune_config(pretrained_checkpoint="/ckpts/gemma3_1b", peft="lora", train_iters=100)
    cfg = gemma3_4b_finetune_config(pretrained_checkpoint="/ckpts/gemma3_4b", peft="lora", seq_length=131072,
                                    context_parallel_size=8, global_batch_size=16)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.training.config import ConfigContainer
from gemma3_runtime.training.recipes.common import BUNDLED_SFT_DATASET, make_peft_config, tiny_model_config
from gemma3_runtime.training.recipes.gemma3_1b import gemma3_1b_finetune_config, gemma3_1b_pretrain_config
from gemma3_runtime.training.recipes.gemma3_4b import gemma3_4b_finetune_config, gemma3_4b_pretrain_config
from gemma3_runtime.training.recipes.gemma3_12b import gemma3_12b_finetune_config, gemma3_12b_pretrain_config
from gemma3_runtime.training.recipes.gemma3_27b import gemma3_27b_finetune_config, gemma3_27b_pretrain_config
from gemma3_runtime.training.recipes.gemma3_270m import gemma3_270m_finetune_config, gemma3_270m_pretrain_config
from gemma3_runtime.training.recipes.gemma3_tiny import gemma3_tiny_finetune_config, gemma3_tiny_pretrain_config

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

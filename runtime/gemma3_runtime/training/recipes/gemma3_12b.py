"""Recipes for Gemma 3 12B: `gemma3_12b_pretrain_config` and `gemma3_12b_finetune_config`.

The defaults the sizes share and the long-context settings are described in the package docstring
(gemma3_runtime.training.recipes); each function's docstring lists every switch.
"""

from __future__ import annotations

from typing import Any

from gemma3_runtime.training.config import ConfigContainer
from gemma3_runtime.training.recipes.common import build_finetune_config, build_pretrain_config


def gemma3_12b_pretrain_config(
    *,
    name: str = "gemma3_12b_pretrain",
    data_paths: list[str] | None = None,
    train_iters: int = 1_168_251,
    global_batch_size: int = 512,
    micro_batch_size: int = 1,
    seq_length: int = 4096,
    lr: float = 3e-4,
    min_lr: float = 3e-5,
    lr_warmup_iters: int = 2000,
    dir: str | None = None,
    tensor_model_parallel_size: int = 4,
    pipeline_model_parallel_size: int = 1,
    context_parallel_size: int = 1,
    seed: int = 1234,
) -> ConfigContainer:
    """Pretrain Gemma 3 12B from random weights.

    Args:
        name: the run's name; the default checkpoint directory is $SAVE_DIR/<name> (else ./runs/<name>).
        data_paths: Megatron .bin/.idx prefixes from `gemma3-runtime prepare-data`, optionally weighted
            (["0.7", "a", "0.3", "b"]); None trains on mock data.
        train_iters: optimizer steps.
        global_batch_size: sequences per step over all data-parallel ranks.
        micro_batch_size: sequences per forward/backward pass on one rank.
        seq_length: tokens per sequence.
        lr: peak learning rate, reached after the warmup.
        min_lr: learning rate at the end of the cosine decay.
        lr_warmup_iters: steps of linear warmup.
        dir: checkpoint directory (saves and resumes there); default $SAVE_DIR/<name>.
        tensor_model_parallel_size: tensor-parallel size.
        pipeline_model_parallel_size: pipeline-parallel size.
        context_parallel_size: context-parallel size: each sequence is split over this many GPUs (seq_length a
            multiple of 2 x it; needs pipeline_model_parallel_size=1), for long context; docs/CONTEXT_PARALLEL.md.
        seed: seed of the weight initialisation and the data order.
    """
    return build_pretrain_config(
        "12b",
        name=name,
        data_paths=data_paths,
        train_iters=train_iters,
        global_batch_size=global_batch_size,
        micro_batch_size=micro_batch_size,
        seq_length=seq_length,
        lr=lr,
        min_lr=min_lr,
        lr_warmup_iters=lr_warmup_iters,
        dir=dir,
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        context_parallel_size=context_parallel_size,
        seed=seed,
    )


def gemma3_12b_finetune_config(
    *,
    name: str = "gemma3_12b_finetune",
    pretrained_checkpoint: str | None = None,
    peft: Any = None,
    train_iters: int = 100,
    global_batch_size: int | None = None,
    micro_batch_size: int = 1,
    seq_length: int = 4096,
    finetune_lr: float | None = None,
    min_lr: float = 0.0,
    lr_warmup_iters: int = 10,
    data_paths: list[str] | None = None,
    dir: str | None = None,
    tensor_model_parallel_size: int | None = None,
    pipeline_model_parallel_size: int | None = None,
    context_parallel_size: int = 1,
    seed: int = 5678,
    packing: bool = True,
) -> ConfigContainer:
    """Finetune Gemma 3 12B from a pretrained checkpoint, fully or with LoRA/DoRA.

    Args:
        name: the run's name; the default checkpoint directory is $SAVE_DIR/<name> (else ./runs/<name>).
        pretrained_checkpoint: Megatron checkpoint of the base weights (e.g. from `gemma3-runtime convert import`);
            its architecture replaces this size's when training starts.
        peft: None (full SFT), "lora", "dora" or a PeftConfig.
        train_iters: optimizer steps.
        global_batch_size: sequences per step over all data-parallel ranks; None: 64 for full SFT, 128 for LoRA/DoRA.
        micro_batch_size: sequences per forward/backward pass on one rank.
        seq_length: tokens per (packed) sequence.
        finetune_lr: peak learning rate; None: 5e-6 for full SFT, 1e-4 for LoRA/DoRA.
        min_lr: learning rate at the end of the cosine decay.
        lr_warmup_iters: steps of linear warmup.
        data_paths: SFT JSONL files (prompt/completion or chat `messages`); None: the bundled synthetic dataset.
        dir: checkpoint directory (saves and resumes there); default $SAVE_DIR/<name>.
        tensor_model_parallel_size: tensor-parallel size; None: 4 for full SFT, 1 for LoRA/DoRA.
        pipeline_model_parallel_size: pipeline-parallel size; None: 1 for full SFT, 1 for LoRA/DoRA.
        context_parallel_size: context-parallel size: each sequence is split over this many GPUs (seq_length a
            multiple of 2 x it; needs pipeline_model_parallel_size=1), for long context; docs/CONTEXT_PARALLEL.md.
        seed: seed of the weight initialisation and the data order.
        packing: pack several examples into one sequence (attention never crosses example boundaries).
    """
    return build_finetune_config(
        "12b",
        name=name,
        pretrained_checkpoint=pretrained_checkpoint,
        peft=peft,
        train_iters=train_iters,
        global_batch_size=global_batch_size,
        micro_batch_size=micro_batch_size,
        seq_length=seq_length,
        finetune_lr=finetune_lr,
        min_lr=min_lr,
        lr_warmup_iters=lr_warmup_iters,
        data_paths=data_paths,
        dir=dir,
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        context_parallel_size=context_parallel_size,
        seed=seed,
        packing=packing,
    )

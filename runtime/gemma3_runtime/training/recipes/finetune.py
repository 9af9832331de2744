"""Finetuning recipes (full SFT, LoRA, DoRA), one explicit function per Gemma 3 size (`gemma3_<size>_finetune_config`).

Full SFT: GBS 64, LR 5e-6, megatron's distributed optimizer; LoRA/DoRA (`peft="lora"` / `"dora"`): GBS 128, LR 1e-4,
rank 8, alpha 16 on all four linears. The 270M finetune uses sequences of 256 so that it runs on a CPU in minutes.
Every value can still be changed afterwards or by a `key=value` override.

Long context (Gemma 3 4B/12B/27B take 131,072 tokens, the 1B 32,768): raise `seq_length` and split each sequence over
`context_parallel_size` GPUs (a multiple of 2 x CP tokens; no pipeline parallelism alongside). jobspecs/
longctx_4b_lora.yaml runs the 4B LoRA at 131,072 tokens with CP=8 on 2 nodes x 8 GPUs; docs/CONTEXT_PARALLEL.md
gives the memory per CP size.

    from gemma3_runtime.training.recipes import gemma3_1b_finetune_config
    cfg = gemma3_1b_finetune_config(pretrained_checkpoint="/ckpts/gemma3_1b", peft="lora", train_iters=100)
    cfg = gemma3_4b_finetune_config(pretrained_checkpoint="/ckpts/gemma3_4b", peft="lora", seq_length=131072,
                                    context_parallel_size=8, global_batch_size=16)
"""

from __future__ import annotations

from typing import Any

from gemma3_runtime.training.config import ConfigContainer
from gemma3_runtime.training.recipes.common import build_finetune_config


def gemma3_tiny_finetune_config(
    *,
    name: str = "gemma3_tiny_finetune",
    pretrained_checkpoint: str | None = None,
    peft: Any = None,
    train_iters: int = 100,
    global_batch_size: int | None = None,
    micro_batch_size: int = 1,
    seq_length: int = 32,
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
    """Finetune the tiny random model (mechanics tests only) from a pretrained checkpoint, fully or with LoRA/DoRA.

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
        tensor_model_parallel_size: tensor-parallel size; None: 1 for full SFT, 1 for LoRA/DoRA.
        pipeline_model_parallel_size: pipeline-parallel size; None: 1 for full SFT, 1 for LoRA/DoRA.
        context_parallel_size: context-parallel size: each sequence is split over this many GPUs (seq_length a
            multiple of 2 x it; needs pipeline_model_parallel_size=1), for long context; docs/CONTEXT_PARALLEL.md.
        seed: seed of the weight initialisation and the data order.
        packing: pack several examples into one sequence (attention never crosses example boundaries).
    """
    return build_finetune_config(
        "tiny",
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


def gemma3_270m_finetune_config(
    *,
    name: str = "gemma3_270m_finetune",
    pretrained_checkpoint: str | None = None,
    peft: Any = None,
    train_iters: int = 100,
    global_batch_size: int | None = None,
    micro_batch_size: int = 1,
    seq_length: int = 256,
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
    """Finetune Gemma 3 270M from a pretrained checkpoint, fully or with LoRA/DoRA.

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
        tensor_model_parallel_size: tensor-parallel size; None: 1 for full SFT, 1 for LoRA/DoRA.
        pipeline_model_parallel_size: pipeline-parallel size; None: 1 for full SFT, 1 for LoRA/DoRA.
        context_parallel_size: context-parallel size: each sequence is split over this many GPUs (seq_length a
            multiple of 2 x it; needs pipeline_model_parallel_size=1), for long context; docs/CONTEXT_PARALLEL.md.
        seed: seed of the weight initialisation and the data order.
        packing: pack several examples into one sequence (attention never crosses example boundaries).
    """
    return build_finetune_config(
        "270m",
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


def gemma3_1b_finetune_config(
    *,
    name: str = "gemma3_1b_finetune",
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
    """Finetune Gemma 3 1B from a pretrained checkpoint, fully or with LoRA/DoRA.

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
        tensor_model_parallel_size: tensor-parallel size; None: 1 for full SFT, 1 for LoRA/DoRA.
        pipeline_model_parallel_size: pipeline-parallel size; None: 1 for full SFT, 1 for LoRA/DoRA.
        context_parallel_size: context-parallel size: each sequence is split over this many GPUs (seq_length a
            multiple of 2 x it; needs pipeline_model_parallel_size=1), for long context; docs/CONTEXT_PARALLEL.md.
        seed: seed of the weight initialisation and the data order.
        packing: pack several examples into one sequence (attention never crosses example boundaries).
    """
    return build_finetune_config(
        "1b",
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


def gemma3_4b_finetune_config(
    *,
    name: str = "gemma3_4b_finetune",
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
    """Finetune Gemma 3 4B from a pretrained checkpoint, fully or with LoRA/DoRA.

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
        tensor_model_parallel_size: tensor-parallel size; None: 1 for full SFT, 1 for LoRA/DoRA.
        pipeline_model_parallel_size: pipeline-parallel size; None: 1 for full SFT, 1 for LoRA/DoRA.
        context_parallel_size: context-parallel size: each sequence is split over this many GPUs (seq_length a
            multiple of 2 x it; needs pipeline_model_parallel_size=1), for long context; docs/CONTEXT_PARALLEL.md.
        seed: seed of the weight initialisation and the data order.
        packing: pack several examples into one sequence (attention never crosses example boundaries).
    """
    return build_finetune_config(
        "4b",
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


def gemma3_27b_finetune_config(
    *,
    name: str = "gemma3_27b_finetune",
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
    """Finetune Gemma 3 27B from a pretrained checkpoint, fully or with LoRA/DoRA.

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
        tensor_model_parallel_size: tensor-parallel size; None: 8 for full SFT, 4 for LoRA/DoRA.
        pipeline_model_parallel_size: pipeline-parallel size; None: 2 for full SFT, 1 for LoRA/DoRA.
        context_parallel_size: context-parallel size: each sequence is split over this many GPUs (seq_length a
            multiple of 2 x it; needs pipeline_model_parallel_size=1), for long context; docs/CONTEXT_PARALLEL.md.
        seed: seed of the weight initialisation and the data order.
        packing: pack several examples into one sequence (attention never crosses example boundaries).
    """
    return build_finetune_config(
        "27b",
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

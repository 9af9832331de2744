"""Pretraining recipes, one explicit function per Gemma 3 size (`gemma3_<size>_pretrain_config`).

Sequence length: 4096 here (the anchor pretrains at 32768); longer sequences split over GPUs with
`context_parallel_size` (docs/CONTEXT_PARALLEL.md). Tensor/pipeline sizes let the model, gradients and optimizer state
fit 80 GB GPUs. Every value can still be changed afterwards
(`cfg.train.train_iters = 10`) or by a `key=value` override.

    from gemma3_runtime.training.recipes import gemma3_1b_pretrain_config
    cfg = gemma3_1b_pretrain_config(name="my_run", data_paths=["/data/corpus_text_document"],
                                    train_iters=1000, global_batch_size=256)
"""

from __future__ import annotations

from gemma3_runtime.training.config import ConfigContainer
from gemma3_runtime.training.recipes.common import build_pretrain_config


def gemma3_tiny_pretrain_config(
    *,
    name: str = "gemma3_tiny_pretrain",
    data_paths: list[str] | None = None,
    train_iters: int = 1_168_251,
    global_batch_size: int = 4,
    micro_batch_size: int = 1,
    seq_length: int = 32,
    lr: float = 3e-4,
    min_lr: float = 3e-5,
    lr_warmup_iters: int = 2000,
    dir: str | None = None,
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    context_parallel_size: int = 1,
    seed: int = 1234,
) -> ConfigContainer:
    """Pretrain the tiny random model (mechanics tests only) from random weights.

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
        "tiny",
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


def gemma3_270m_pretrain_config(
    *,
    name: str = "gemma3_270m_pretrain",
    data_paths: list[str] | None = None,
    train_iters: int = 1_168_251,
    global_batch_size: int = 512,
    micro_batch_size: int = 1,
    seq_length: int = 4096,
    lr: float = 3e-4,
    min_lr: float = 3e-5,
    lr_warmup_iters: int = 2000,
    dir: str | None = None,
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    context_parallel_size: int = 1,
    seed: int = 1234,
) -> ConfigContainer:
    """Pretrain Gemma 3 270M from random weights.

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
        "270m",
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


def gemma3_1b_pretrain_config(
    *,
    name: str = "gemma3_1b_pretrain",
    data_paths: list[str] | None = None,
    train_iters: int = 1_168_251,
    global_batch_size: int = 512,
    micro_batch_size: int = 1,
    seq_length: int = 4096,
    lr: float = 3e-4,
    min_lr: float = 3e-5,
    lr_warmup_iters: int = 2000,
    dir: str | None = None,
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    context_parallel_size: int = 1,
    seed: int = 1234,
) -> ConfigContainer:
    """Pretrain Gemma 3 1B from random weights.

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
        "1b",
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


def gemma3_4b_pretrain_config(
    *,
    name: str = "gemma3_4b_pretrain",
    data_paths: list[str] | None = None,
    train_iters: int = 1_168_251,
    global_batch_size: int = 512,
    micro_batch_size: int = 1,
    seq_length: int = 4096,
    lr: float = 3e-4,
    min_lr: float = 3e-5,
    lr_warmup_iters: int = 2000,
    dir: str | None = None,
    tensor_model_parallel_size: int = 2,
    pipeline_model_parallel_size: int = 1,
    context_parallel_size: int = 1,
    seed: int = 1234,
) -> ConfigContainer:
    """Pretrain Gemma 3 4B from random weights.

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
        "4b",
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


def gemma3_27b_pretrain_config(
    *,
    name: str = "gemma3_27b_pretrain",
    data_paths: list[str] | None = None,
    train_iters: int = 1_168_251,
    global_batch_size: int = 512,
    micro_batch_size: int = 1,
    seq_length: int = 4096,
    lr: float = 3e-4,
    min_lr: float = 3e-5,
    lr_warmup_iters: int = 2000,
    dir: str | None = None,
    tensor_model_parallel_size: int = 8,
    pipeline_model_parallel_size: int = 2,
    context_parallel_size: int = 1,
    seed: int = 1234,
) -> ConfigContainer:
    """Pretrain Gemma 3 27B from random weights.

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
        "27b",
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

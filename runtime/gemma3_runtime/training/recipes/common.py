"""What the recipes share: the model per size, the save directory, the PEFT section and two builders.

Defaults follow the seed's recommended table - full SFT: TP1 PP1, GBS 64-128, LR 5e-6; LoRA/DoRA: GBS 128-256,
LR 1e-4 - and the anchor's optimizer/scheduler (AdamW 0.9/0.95, eps 1e-8, weight decay 0.1, clip 1.0, cosine).
"""

from __future__ import annotations

import os
from typing import Any

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.training.config import (
    CheckpointConfig,
    ConfigContainer,
    DataConfig,
    EvalConfig,
    LoggingConfig,
    OptimizerConfig,
    ParallelismConfig,
    SchedulerConfig,
    TrainConfig,
)

#: the dataset shipped inside the package (data/bundled/), see data/synthetic.py
BUNDLED_SFT_DATASET = "bundled:wordcode"

#: Finetuning parallelism per size, (tensor, pipeline) for full SFT and for LoRA/DoRA: the anchor's VL recipes
#: (4B/12B/27B SFT 1/1, 4/1, 8/2; PEFT 1/1, 1/1, 4/1), one 80 GB GPU per model shard.
FINETUNE_PARALLELISM: dict[str, dict[str, tuple[int, int]]] = {
    "tiny": {"full": (1, 1), "peft": (1, 1)},
    "270m": {"full": (1, 1), "peft": (1, 1)},
    "1b": {"full": (1, 1), "peft": (1, 1)},
    "4b": {"full": (1, 1), "peft": (1, 1)},
    "12b": {"full": (4, 1), "peft": (1, 1)},
    "27b": {"full": (8, 2), "peft": (4, 1)},
}


def tiny_model_config() -> Any:
    """A 4-layer random Gemma 3 (2 kv heads so TP=2 splits whole groups; one global layer per 2) for smoke runs."""
    from gemma3_runtime.model.config import FULL, SLIDING, Gemma3Config

    return Gemma3Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_layers=4,
        num_attention_heads=4,
        num_kv_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=8,
        layer_types=(SLIDING, FULL, SLIDING, FULL),
        max_position_embeddings=256,
        name="tiny",
    )


def model_for_size(size: str) -> Any:
    """The architecture of one Gemma 3 size (Gemma3Config.preset), or the tiny smoke-test model."""
    from gemma3_runtime.model.config import Gemma3Config

    return tiny_model_config() if size == "tiny" else Gemma3Config.preset(size)


def save_dir(name: str, dir: str | None) -> str:
    """`dir`, else $SAVE_DIR/<name>, else ./runs/<name>."""
    if dir:
        return dir
    return os.path.join(os.environ.get("SAVE_DIR") or "runs", name)


def make_peft_config(peft: Any) -> Any:
    """None | "lora" | "dora" | a PEFT config object -> the `peft` section (None for full finetuning)."""
    if peft is None or (isinstance(peft, str) and peft.lower() in ("", "none")):
        return None
    if isinstance(peft, str):
        kind = peft.lower()
        if kind not in ("lora", "dora"):
            raise UserInputError(f"peft={peft!r}: expected None, 'lora' or 'dora'")
        from gemma3_runtime.peft.config import PeftConfig

        return PeftConfig.for_kind(kind)
    return peft


def _adamw(lr: float, min_lr: float, *, distributed: bool = True) -> OptimizerConfig:
    return OptimizerConfig(
        lr=lr,
        min_lr=min_lr,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_eps=1e-8,
        clip_grad=1.0,
        use_distributed_optimizer=distributed,
    )


def build_pretrain_config(
    size: str,
    *,
    name: str,
    data_paths: list[str] | None,
    train_iters: int,
    global_batch_size: int,
    micro_batch_size: int,
    seq_length: int,
    lr: float,
    min_lr: float,
    lr_warmup_iters: int,
    dir: str | None,
    tensor_model_parallel_size: int,
    pipeline_model_parallel_size: int,
    context_parallel_size: int,
    seed: int,
) -> ConfigContainer:
    """A pretraining run from random weights; see the size's `gemma3_<size>_pretrain_config` for each switch."""
    return ConfigContainer(
        name=name,
        model=model_for_size(size),
        train=TrainConfig(
            train_iters=train_iters, global_batch_size=global_batch_size, micro_batch_size=micro_batch_size, seed=seed
        ),
        optimizer=_adamw(lr, min_lr),
        scheduler=SchedulerConfig(lr_warmup_iters=lr_warmup_iters, lr_decay_style="cosine"),
        # no data paths = mock data, as the anchor's pretrain recipe does
        data=DataConfig(
            kind="indexed" if data_paths else "mock",
            data_paths=list(data_paths) if data_paths else None,
            seq_length=seq_length,
            split="9999,8,2",
        ),
        eval=EvalConfig(interval=2000, iters=32),
        checkpoint=CheckpointConfig(save=save_dir(name, dir), save_interval=500),
        logging=LoggingConfig(log_interval=10),
        parallelism=ParallelismConfig(
            tensor_model_parallel_size=tensor_model_parallel_size,
            pipeline_model_parallel_size=pipeline_model_parallel_size,
            context_parallel_size=context_parallel_size,
        ),
    )


def build_finetune_config(
    size: str,
    *,
    name: str,
    pretrained_checkpoint: str | None,
    peft: Any,
    train_iters: int,
    global_batch_size: int | None,
    micro_batch_size: int,
    seq_length: int,
    finetune_lr: float | None,
    min_lr: float,
    lr_warmup_iters: int,
    data_paths: list[str] | None,
    dir: str | None,
    tensor_model_parallel_size: int | None,
    pipeline_model_parallel_size: int | None,
    context_parallel_size: int,
    seed: int,
    packing: bool,
) -> ConfigContainer:
    """A finetuning run (full or LoRA/DoRA); see the size's `gemma3_<size>_finetune_config` for each switch."""
    peft_cfg = make_peft_config(peft)
    is_peft = peft_cfg is not None
    default_tp, default_pp = FINETUNE_PARALLELISM[size]["peft" if is_peft else "full"]
    return ConfigContainer(
        name=name,
        # replaced by the pretrained checkpoint's own architecture when training starts
        model=model_for_size(size),
        train=TrainConfig(
            train_iters=train_iters,
            global_batch_size=global_batch_size or (128 if is_peft else 64),
            micro_batch_size=micro_batch_size,
            seed=seed,
        ),
        # LoRA/DoRA: the trainable adapters are small, a distributed optimizer would only add communication
        optimizer=_adamw(
            finetune_lr if finetune_lr is not None else (1e-4 if is_peft else 5e-6), min_lr, distributed=not is_peft
        ),
        scheduler=SchedulerConfig(lr_warmup_iters=lr_warmup_iters, lr_decay_style="cosine"),
        data=DataConfig(
            kind="sft",
            data_paths=list(data_paths) if data_paths else [BUNDLED_SFT_DATASET],
            seq_length=seq_length,
            packing=packing,
        ),
        eval=EvalConfig(interval=50, iters=10),
        checkpoint=CheckpointConfig(
            save=save_dir(name, dir), pretrained_checkpoint=pretrained_checkpoint, save_interval=100
        ),
        logging=LoggingConfig(log_interval=10),
        parallelism=ParallelismConfig(
            tensor_model_parallel_size=tensor_model_parallel_size or default_tp,
            pipeline_model_parallel_size=pipeline_model_parallel_size or default_pp,
            context_parallel_size=context_parallel_size,
        ),
        peft=peft_cfg,
    )

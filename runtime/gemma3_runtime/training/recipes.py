"""Recipes: plain functions that return a ConfigContainer for one model size and one job.

Read top to bottom: the table of per-size parallelism, two builders (pretrain, finetune) and one pair of public
functions per size. Defaults follow the seed's recommended table - full SFT: TP1 PP1, GBS 64-128, LR 5e-6;
LoRA/DoRA: GBS 128-256, LR 1e-4 - and the anchor's optimizer/scheduler (reference/gemma3.md section 5), except where
noted. Every value can still be changed afterwards (`cfg.train.train_iters = 10`) or by a `key=value` override.

    from gemma3_runtime.training.recipes import gemma3_1b_pretrain_config
    cfg = gemma3_1b_pretrain_config(name="my_run", data_paths=["/data/corpus_text_document"],
                                    train_iters=1000, global_batch_size=256)
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _SizeDefaults:
    """Parallelism that fits one 80 GB GPU per model replica shard, per job kind."""

    pretrain_tp: int
    pretrain_pp: int
    sft_tp: int
    sft_pp: int
    peft_tp: int
    peft_pp: int


# 4B/12B/27B follow the anchor's VL recipes (SFT 1/1, 4/1, 8/2; PEFT 1/1, 1/1, 4/1); pretraining needs the
# optimizer state too, hence the larger TP for 4B.
_SIZES: dict[str, _SizeDefaults] = {
    "tiny": _SizeDefaults(1, 1, 1, 1, 1, 1),
    "270m": _SizeDefaults(1, 1, 1, 1, 1, 1),
    "1b": _SizeDefaults(1, 1, 1, 1, 1, 1),
    "4b": _SizeDefaults(2, 1, 1, 1, 1, 1),
    "12b": _SizeDefaults(4, 1, 4, 1, 1, 1),
    "27b": _SizeDefaults(8, 2, 8, 2, 4, 1),
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


def _model(size: str) -> Any:
    from gemma3_runtime.model.config import Gemma3Config

    return tiny_model_config() if size == "tiny" else Gemma3Config.preset(size)


def _save_dir(name: str, dir: str | None) -> str:
    """`dir`, else $SAVE_DIR/<name>, else ./runs/<name>."""
    if dir:
        return dir
    return os.path.join(os.environ.get("SAVE_DIR") or "runs", name)


def _pretrain(
    size: str,
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
    tensor_model_parallel_size: int | None,
    pipeline_model_parallel_size: int | None,
    seed: int,
) -> ConfigContainer:
    sizes = _SIZES[size]
    save = _save_dir(name, dir)
    return ConfigContainer(
        name=name,
        model=_model(size),
        train=TrainConfig(
            train_iters=train_iters, global_batch_size=global_batch_size, micro_batch_size=micro_batch_size, seed=seed
        ),
        optimizer=OptimizerConfig(
            lr=lr, min_lr=min_lr, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8, clip_grad=1.0
        ),
        scheduler=SchedulerConfig(lr_warmup_iters=lr_warmup_iters, lr_decay_style="cosine"),
        # no data paths = mock data, as the anchor's pretrain recipe does
        data=DataConfig(
            kind="indexed" if data_paths else "mock",
            data_paths=list(data_paths) if data_paths else None,
            seq_length=seq_length,
            split="9999,8,2",
        ),
        eval=EvalConfig(interval=2000, iters=32),
        checkpoint=CheckpointConfig(save=save, save_interval=500),
        logging=LoggingConfig(log_interval=10),
        parallelism=ParallelismConfig(
            tensor_model_parallel_size=tensor_model_parallel_size or sizes.pretrain_tp,
            pipeline_model_parallel_size=pipeline_model_parallel_size or sizes.pretrain_pp,
        ),
    )


def _finetune(
    size: str,
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
    seed: int,
    packing: bool,
) -> ConfigContainer:
    sizes = _SIZES[size]
    peft_cfg = make_peft_config(peft)
    is_peft = peft_cfg is not None
    tp = tensor_model_parallel_size or (sizes.peft_tp if is_peft else sizes.sft_tp)
    pp = pipeline_model_parallel_size or (sizes.peft_pp if is_peft else sizes.sft_pp)
    save = _save_dir(name, dir)
    return ConfigContainer(
        name=name,
        # replaced by the pretrained checkpoint's own architecture when training starts
        model=_model(size),
        train=TrainConfig(
            train_iters=train_iters,
            global_batch_size=global_batch_size or (128 if is_peft else 64),
            micro_batch_size=micro_batch_size,
            seed=seed,
        ),
        optimizer=OptimizerConfig(
            lr=finetune_lr if finetune_lr is not None else (1e-4 if is_peft else 5e-6),
            min_lr=min_lr,
            weight_decay=0.1,
            adam_beta1=0.9,
            adam_beta2=0.95,
            adam_eps=1e-8,
            clip_grad=1.0,
            use_distributed_optimizer=not is_peft,
        ),
        scheduler=SchedulerConfig(lr_warmup_iters=lr_warmup_iters, lr_decay_style="cosine"),
        data=DataConfig(
            kind="sft",
            data_paths=list(data_paths) if data_paths else [BUNDLED_SFT_DATASET],
            seq_length=seq_length,
            packing=packing,
        ),
        eval=EvalConfig(interval=50, iters=10),
        checkpoint=CheckpointConfig(save=save, pretrained_checkpoint=pretrained_checkpoint, save_interval=100),
        logging=LoggingConfig(log_interval=10),
        parallelism=ParallelismConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp),
        peft=peft_cfg,
    )


def make_peft_config(peft: Any) -> Any:
    """None | "lora" | "dora" | a PEFT config object -> the `peft` section (None for full finetuning)."""
    if peft is None or (isinstance(peft, str) and peft.lower() in ("", "none")):
        return None
    if isinstance(peft, str):
        scheme = peft.lower()
        if scheme not in ("lora", "dora"):
            raise UserInputError(f"peft={peft!r}: expected None, 'lora' or 'dora'")
        from gemma3_runtime.peft.config import PeftConfig

        return PeftConfig.for_scheme(scheme) if hasattr(PeftConfig, "for_scheme") else PeftConfig(scheme=scheme)
    return peft


# ---- per-size public recipes ---------------------------------------------------------------------------------------
def _pretrain_recipe(size: str, *, default_seq: int, default_gbs: int) -> Callable[..., ConfigContainer]:
    def recipe(
        name: str = f"gemma3_{size}_pretrain",
        data_paths: list[str] | None = None,
        train_iters: int = 1_168_251,
        global_batch_size: int = default_gbs,
        micro_batch_size: int = 1,
        seq_length: int = default_seq,
        lr: float = 3e-4,
        min_lr: float = 3e-5,
        lr_warmup_iters: int = 2000,
        dir: str | None = None,
        tensor_model_parallel_size: int | None = None,
        pipeline_model_parallel_size: int | None = None,
        seed: int = 1234,
    ) -> ConfigContainer:
        return _pretrain(
            size,
            name,
            data_paths,
            train_iters,
            global_batch_size,
            micro_batch_size,
            seq_length,
            lr,
            min_lr,
            lr_warmup_iters,
            dir,
            tensor_model_parallel_size,
            pipeline_model_parallel_size,
            seed,
        )

    recipe.__name__ = recipe.__qualname__ = f"gemma3_{size}_pretrain_config"
    recipe.__doc__ = (
        f"Pretrain Gemma 3 {size.upper()} from random weights. data_paths: Megatron .bin/.idx prefixes "
        f"(`gemma3-runtime prepare-data`); none = mock data."
    )
    return recipe


def _finetune_recipe(size: str, *, default_seq: int) -> Callable[..., ConfigContainer]:
    def recipe(
        name: str = f"gemma3_{size}_finetune",
        pretrained_checkpoint: str | None = None,
        peft: Any = None,
        train_iters: int = 100,
        global_batch_size: int | None = None,
        micro_batch_size: int = 1,
        seq_length: int = default_seq,
        finetune_lr: float | None = None,
        min_lr: float = 0.0,
        lr_warmup_iters: int = 10,
        data_paths: list[str] | None = None,
        dir: str | None = None,
        tensor_model_parallel_size: int | None = None,
        pipeline_model_parallel_size: int | None = None,
        seed: int = 5678,
        packing: bool = True,
    ) -> ConfigContainer:
        return _finetune(
            size,
            name,
            pretrained_checkpoint,
            peft,
            train_iters,
            global_batch_size,
            micro_batch_size,
            seq_length,
            finetune_lr,
            min_lr,
            lr_warmup_iters,
            data_paths,
            dir,
            tensor_model_parallel_size,
            pipeline_model_parallel_size,
            seed,
            packing,
        )

    recipe.__name__ = recipe.__qualname__ = f"gemma3_{size}_finetune_config"
    recipe.__doc__ = (
        f"Finetune Gemma 3 {size.upper()} from `pretrained_checkpoint` (a Megatron checkpoint, e.g. from "
        f"`gemma3-runtime convert import`): peft=None (full SFT, GBS 64, LR 5e-6) or 'lora'/'dora' "
        f"(GBS 128, LR 1e-4). data_paths: SFT JSONL files; default: the bundled synthetic dataset."
    )
    return recipe


# Sequence lengths: the anchor pretrains at 32768 (with context parallelism we do not have); 4096 here. The 270M
# finetune uses 256 so that it runs on a CPU in minutes; the tiny model is for mechanics only.
gemma3_tiny_pretrain_config = _pretrain_recipe("tiny", default_seq=32, default_gbs=4)
gemma3_tiny_finetune_config = _finetune_recipe("tiny", default_seq=32)
gemma3_270m_pretrain_config = _pretrain_recipe("270m", default_seq=4096, default_gbs=512)
gemma3_270m_finetune_config = _finetune_recipe("270m", default_seq=256)
gemma3_1b_pretrain_config = _pretrain_recipe("1b", default_seq=4096, default_gbs=512)
gemma3_1b_finetune_config = _finetune_recipe("1b", default_seq=4096)
gemma3_4b_pretrain_config = _pretrain_recipe("4b", default_seq=4096, default_gbs=512)
gemma3_4b_finetune_config = _finetune_recipe("4b", default_seq=4096)
gemma3_12b_pretrain_config = _pretrain_recipe("12b", default_seq=4096, default_gbs=512)
gemma3_12b_finetune_config = _finetune_recipe("12b", default_seq=4096)
gemma3_27b_pretrain_config = _pretrain_recipe("27b", default_seq=4096, default_gbs=512)
gemma3_27b_finetune_config = _finetune_recipe("27b", default_seq=4096)

#: name -> recipe function (what `gemma3-runtime run --recipe NAME` looks up)
RECIPES: dict[str, Callable[..., ConfigContainer]] = {
    fn.__name__: fn
    for fn in (
        gemma3_tiny_pretrain_config,
        gemma3_tiny_finetune_config,
        gemma3_270m_pretrain_config,
        gemma3_270m_finetune_config,
        gemma3_1b_pretrain_config,
        gemma3_1b_finetune_config,
        gemma3_4b_pretrain_config,
        gemma3_4b_finetune_config,
        gemma3_12b_pretrain_config,
        gemma3_12b_finetune_config,
        gemma3_27b_pretrain_config,
        gemma3_27b_finetune_config,
    )
}


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

"""`validate(cfg, world_size=...)`: every check of a run configuration that reads no file, in one place.

The runtime's `run` (before and after it resolves checkpoints), `gemma3-runtime run --dry-run` and the launcher's
`validate` / `submit` (on the login node, gemma3_launch/runtime_config.py) all call this, so a job never queues with
a configuration the runtime would refuse. Checks that need files (data paths exist, checkpoints resolve, a tokenizer
loads) stay where the files are read. Torch-free: the launcher imports it.

Every failure is a `UserInputError` with one line that names the key and what was expected.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.parallel.context_rules import split_problem
from gemma3_runtime.training.config import ConfigContainer
from gemma3_runtime.training.config_types import check_types, shown

#: Devices `train.device` / `--device` accept (None: CUDA when available).
DEVICES = ("cpu", "cuda")


def validate(cfg: ConfigContainer, *, world_size: int | None = None) -> int | None:
    """Check `cfg` for a run on `world_size` processes (None: skip the checks that need it).

    Returns the data-parallel size when `world_size` is given. Raises `UserInputError` on the first problem.
    """
    if not isinstance(cfg, ConfigContainer):
        raise UserInputError(f"config: expected a ConfigContainer, got {type(cfg).__name__}")
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name not in ("model", "peft") and dataclasses.is_dataclass(value):
            check_types(value, f.name)
    _check_train(cfg)
    _check_optimizer(cfg)
    _check_data(cfg)
    _check_eval_and_checkpoints(cfg)
    _check_logging(cfg)
    _check_peft(cfg)
    _check_parallel_layout(cfg)
    if cfg.perf.ce_chunk_mib <= 0:
        raise UserInputError(f"perf.ce_chunk_mib={cfg.perf.ce_chunk_mib}: expected a positive integer")
    if world_size is None:
        num_microbatches(cfg.train.global_batch_size, cfg.train.micro_batch_size, 1)
        return None
    return data_parallel_size(cfg, world_size)


def num_microbatches(global_batch_size: int, micro_batch_size: int, dp_size: int) -> int:
    """Micro-batches per step on each data-parallel rank; the global batch must split evenly."""
    if global_batch_size % (micro_batch_size * dp_size):
        raise UserInputError(
            f"train.global_batch_size={global_batch_size} is not divisible by train.micro_batch_size x "
            f"data-parallel size = {micro_batch_size} x {dp_size} = {micro_batch_size * dp_size}"
        )
    return global_batch_size // (micro_batch_size * dp_size)


def data_parallel_size(cfg: ConfigContainer, world_size: int) -> int:
    """world size / (tensor x pipeline x context); checks that both the world and the global batch divide evenly."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size <= 0:
        raise UserInputError(f"world size {shown(world_size)}: expected a positive integer (nodes x processes)")
    par = cfg.parallelism
    tp, pp, cp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size, par.context_parallel_size
    model_parallel = tp * pp * cp
    if world_size % model_parallel:
        raise UserInputError(
            f"parallelism: tensor x pipeline x context = {tp} x {pp} x {cp} = {model_parallel} does not divide "
            f"the world size {world_size} (nodes x processes per node)"
        )
    dp = world_size // model_parallel
    num_microbatches(cfg.train.global_batch_size, cfg.train.micro_batch_size, dp)
    return dp


# ---- sections ------------------------------------------------------------------------------------------------------
def _positive(key: str, value: int | None, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if value is None or value <= 0:
        raise UserInputError(f"{key}={value}: expected a positive integer{' or null' if optional else ''}")


def _at_least_zero(key: str, value: float) -> None:
    if value < 0:
        raise UserInputError(f"{key}={value}: expected a number >= 0")


def _check_train(cfg: ConfigContainer) -> None:
    t = cfg.train
    _positive("train.train_iters", t.train_iters)
    _positive("train.global_batch_size", t.global_batch_size)
    _positive("train.micro_batch_size", t.micro_batch_size)
    _positive("train.exit_interval", t.exit_interval, optional=True)
    if t.device is not None and t.device not in DEVICES:
        raise UserInputError(f"train.device: expected one of {', '.join(DEVICES)} or null, got {shown(t.device)}")
    if t.precision == "bf16-mixed" and t.device == "cpu":
        raise UserInputError(
            "train.precision=bf16-mixed needs CUDA (fp32 main weights live in megatron's "
            "optimizer); use train.precision=fp32 on CPU"
        )
    if t.exit_interval is not None and not cfg.checkpoint.save:
        raise UserInputError("train.exit_interval needs checkpoint.save (the run saves there before it stops)")
    _check_recompute(cfg)


def _check_recompute(cfg: ConfigContainer) -> None:
    """megatron-core's recompute rules, as one line naming the key (megatron itself would assert mid-build)."""
    t = cfg.train
    _positive("train.recompute_num_layers", t.recompute_num_layers, optional=True)
    if t.recompute_granularity != "full":
        for key, value in (("recompute_method", t.recompute_method), ("recompute_num_layers", t.recompute_num_layers)):
            if value is not None:
                raise UserInputError(
                    f"train.{key}={value} applies to train.recompute_granularity=full only "
                    f"(got {t.recompute_granularity or 'null'}); leave it null"
                )
        return
    per_stage = cfg.model.num_layers // cfg.parallelism.pipeline_model_parallel_size if cfg.model else None
    if t.recompute_num_layers is not None and per_stage and t.recompute_num_layers > per_stage:
        raise UserInputError(
            f"train.recompute_num_layers={t.recompute_num_layers}: expected at most the layers per pipeline stage "
            f"({per_stage})"
        )


def _check_optimizer(cfg: ConfigContainer) -> None:
    o, s = cfg.optimizer, cfg.scheduler
    for key, value in (
        ("optimizer.lr", o.lr),
        ("optimizer.min_lr", o.min_lr),
        ("optimizer.weight_decay", o.weight_decay),
        ("optimizer.clip_grad", o.clip_grad),
        ("scheduler.lr_warmup_init", s.lr_warmup_init),
        ("scheduler.lr_warmup_iters", s.lr_warmup_iters),
    ):
        _at_least_zero(key, value)
    for key, value in (("optimizer.adam_beta1", o.adam_beta1), ("optimizer.adam_beta2", o.adam_beta2)):
        if not 0.0 <= value < 1.0:
            raise UserInputError(f"{key}={value}: expected a number in [0, 1)")
    if o.adam_eps <= 0:
        raise UserInputError(f"optimizer.adam_eps={o.adam_eps}: expected a positive number")
    _positive("scheduler.lr_decay_iters", s.lr_decay_iters, optional=True)


def _check_data(cfg: ConfigContainer) -> None:
    d = cfg.data
    _positive("data.seq_length", d.seq_length)
    _positive("data.mock_vocab_size", d.mock_vocab_size, optional=True)
    if d.kind in ("sft", "indexed", "text") and not d.data_paths:
        needs = {
            "sft": "JSONL/Parquet/Arrow files or directories, hf:OWNER/NAME, or bundled:wordcode",
            "text": "JSONL/Parquet/Arrow files or directories, or hf:OWNER/NAME",
            "indexed": ".bin/.idx prefixes",
        }[d.kind]
        raise UserInputError(f"data.data_paths is empty (data.kind={d.kind} needs {needs})")
    for key, value in (("data.text_key", d.text_key), ("data.hf_split", d.hf_split), ("data.hf_subset", d.hf_subset)):
        if value is not None and not value.strip():
            raise UserInputError(f"{key}: expected a non-empty name{' or null' if key == 'data.hf_subset' else ''}")
    if d.kind in ("sft", "text"):
        for key, paths in (("data.data_paths", d.data_paths), ("data.valid_paths", d.valid_paths)):
            for path in paths or []:
                _check_hub_id(key, path)
    if not 0.0 <= d.valid_fraction < 1.0:
        raise UserInputError(f"data.valid_fraction={d.valid_fraction}: expected a number in [0, 1)")
    if d.kind == "indexed":
        _check_split(d.split)
    model = cfg.model
    if model is None:
        return
    if d.seq_length > model.max_position_embeddings:
        raise UserInputError(
            f"data.seq_length={d.seq_length} exceeds the model's "
            f"max_position_embeddings={model.max_position_embeddings}"
        )
    if d.mock_vocab_size is not None and d.mock_vocab_size > model.vocab_size:
        raise UserInputError(
            f"data.mock_vocab_size={d.mock_vocab_size} exceeds the model's vocab_size={model.vocab_size}"
        )


def _check_hub_id(key: str, path: str) -> None:
    """`hf:OWNER/NAME` (or `hf:NAME`): the shape only; whether it loads is checked where it is read."""
    if not path.startswith("hf:"):
        return
    parts = path[len("hf:") :].split("/")
    if len(parts) > 2 or not all(p and p.strip() == p and " " not in p for p in parts):
        raise UserInputError(f"{key}: {shown(path)} is not a hub dataset id (expected hf:OWNER/NAME)")


def _check_logging(cfg: ConfigContainer) -> None:
    lg = cfg.logging
    _positive("logging.log_interval", lg.log_interval)
    if not lg.wandb_init_timeout_s > 0:
        raise UserInputError(f"logging.wandb_init_timeout_s={lg.wandb_init_timeout_s}: expected a positive number")
    for key, value in (
        ("logging.wandb_project", lg.wandb_project),
        ("logging.wandb_entity", lg.wandb_entity),
        ("logging.wandb_exp_name", lg.wandb_exp_name),
    ):
        if value is not None and not value.strip():
            raise UserInputError(f"{key}: expected a non-empty name or null")
    for tag in lg.wandb_tags or []:
        # W&B's limit: tags of 1 to 64 characters
        if not isinstance(tag, str) or not 0 < len(tag) <= 64:
            raise UserInputError(f"logging.wandb_tags: expected names of 1 to 64 characters, got {shown(tag)}")


def _check_split(split: str) -> None:
    """Megatron's train/valid/test split: up to three non-negative weights separated by `,` or `/`."""
    parts = split.replace("/", ",").split(",")
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        weights = []
    if not 1 <= len(weights) <= 3 or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserInputError(f"data.split={shown(split)}: expected up to three weights >= 0, e.g. 9999,8,2")


def _check_eval_and_checkpoints(cfg: ConfigContainer) -> None:
    e, c = cfg.eval, cfg.checkpoint
    _positive("eval.interval", e.interval, optional=True)
    _positive("eval.iters", e.iters)
    _positive("eval.task_items", e.task_items)
    _positive("eval.task_max_new_tokens", e.task_max_new_tokens)
    _positive("checkpoint.save_interval", c.save_interval, optional=True)
    if e.task_accuracy and not cfg.data.valid_paths:
        bundled = any(p.startswith("bundled:") for p in cfg.data.data_paths or [])
        if not bundled:
            raise UserInputError(
                "eval.task_accuracy=true needs data.valid_paths with prompt/completion rows (or the bundled dataset)"
            )
    if c.save_interval is not None and not c.save:
        raise UserInputError("checkpoint.save_interval needs checkpoint.save (where to save)")


def _check_peft(cfg: ConfigContainer) -> None:
    if cfg.peft is None:
        return
    if hasattr(cfg.peft, "validate"):
        cfg.peft.validate()
    if not cfg.checkpoint.pretrained_checkpoint:
        raise UserInputError("peft needs checkpoint.pretrained_checkpoint (the frozen base weights)")


def _check_parallel_layout(cfg: ConfigContainer) -> None:
    """Tensor / pipeline / context sizes against each other, the sequence and the architecture."""
    par = cfg.parallelism
    tp, pp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size
    _positive("parallelism.tensor_model_parallel_size", tp)
    _positive("parallelism.pipeline_model_parallel_size", pp)
    _check_context_parallel(cfg)
    if par.sequence_parallel and tp == 1:
        raise UserInputError("parallelism.sequence_parallel needs parallelism.tensor_model_parallel_size > 1")
    model: Any = cfg.model
    if model is None:
        return
    where = f"parallelism.tensor_model_parallel_size={tp}"
    if model.num_attention_heads % tp:
        raise UserInputError(f"{where} must divide the model's num_attention_heads={model.num_attention_heads}")
    if model.num_kv_heads % tp and tp % model.num_kv_heads:
        raise UserInputError(f"{where} and the model's num_kv_heads={model.num_kv_heads}: one must divide the other")
    if model.intermediate_size % tp:
        raise UserInputError(f"{where} must divide the model's intermediate_size={model.intermediate_size}")
    if model.padded_vocab_size % tp:
        raise UserInputError(f"{where} must divide the model's padded vocabulary {model.padded_vocab_size}")
    if pp > model.num_layers:
        raise UserInputError(
            f"parallelism.pipeline_model_parallel_size={pp} exceeds the model's num_layers={model.num_layers}"
        )


def _check_context_parallel(cfg: ConfigContainer) -> None:
    """Context parallelism (docs/CONTEXT_PARALLEL.md): a positive size, the zigzag split's rule on the sequence
    length (context_rules, shared with the split itself), and no pipeline parallelism alongside it."""
    par = cfg.parallelism
    cp, pp = par.context_parallel_size, par.pipeline_model_parallel_size
    _positive("parallelism.context_parallel_size", cp)
    if cp == 1:
        return
    problem = split_problem(
        cfg.data.seq_length, cp, seq_key="data.seq_length", cp_key="parallelism.context_parallel_size"
    )
    if problem is not None:
        raise UserInputError(problem)
    if pp > 1:
        raise UserInputError(
            f"parallelism.context_parallel_size={cp} with parallelism.pipeline_model_parallel_size={pp}: context "
            "parallelism does not combine with pipeline parallelism (set one of them to 1)"
        )

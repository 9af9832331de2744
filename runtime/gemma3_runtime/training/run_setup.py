"""What a training run settles before any process group or model exists: precision, checkpoints, the checks that need
no model; and the run's result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from gemma3_runtime.checkpoint.layout import ResolvedCheckpoint
from gemma3_runtime.errors import UserInputError
from gemma3_runtime.training.config import ConfigContainer


@dataclass
class TrainResult:
    status: str  # "completed" | "preempted" | "stopped" (train.exit_interval)
    iteration: int
    train_losses: list = field(default_factory=list)
    eval_losses: list = field(default_factory=list)
    task_accuracies: list = field(default_factory=list)
    seconds: float = 0.0
    save_dir: str | None = None
    checkpoint: str | None = None
    #: what the speed layer applied (gemma3_runtime.perf.apply)
    speed_layer: dict = field(default_factory=dict)


def resolve_precision(cfg: ConfigContainer, device: torch.device) -> bool:
    """True for bf16 params + fp32 main weights."""
    precision = cfg.train.precision
    if precision == "auto":
        return device.type == "cuda"
    if precision == "bf16-mixed" and device.type != "cuda":
        raise UserInputError(
            "train.precision=bf16-mixed needs CUDA (fp32 main weights live in megatron's "
            "optimizer); use train.precision=fp32 on CPU"
        )
    return precision == "bf16-mixed"


def check_config(cfg: ConfigContainer, world_size: int) -> int:
    """The config checks (training/validate.py), then those that read files; returns the data-parallel size."""
    from gemma3_runtime.training.validate import validate

    dp = validate(cfg, world_size=world_size)
    if cfg.data.kind == "sft":
        from gemma3_runtime.data.builder import resolve_sft_paths

        resolve_sft_paths(cfg.data.data_paths)
    elif cfg.data.kind == "indexed":
        from gemma3_runtime.data.indexed import check_prefixes, parse_blend

        check_prefixes(parse_blend(cfg.data.data_paths)[0], "data.data_paths")
    return dp


def resolve_checkpoints(cfg: ConfigContainer) -> tuple[ResolvedCheckpoint | None, ResolvedCheckpoint | None]:
    """(resume checkpoint or None, pretrained checkpoint or None); validates both and sets `cfg.model` from the
    checkpoint when there is one (its architecture is the one the weights have)."""
    from gemma3_runtime.checkpoint.layout import resolve_checkpoint
    from gemma3_runtime.loader import checkpoint_model_config
    from gemma3_runtime.training.checkpointing import find_resume_checkpoint

    pretrained = None
    if cfg.checkpoint.pretrained_checkpoint:
        pretrained = resolve_checkpoint(cfg.checkpoint.pretrained_checkpoint)
    load = cfg.checkpoint.load or cfg.checkpoint.save
    if cfg.checkpoint.load and cfg.checkpoint.load != cfg.checkpoint.save and not Path(cfg.checkpoint.load).exists():
        raise UserInputError(f"checkpoint.load: {cfg.checkpoint.load!r} does not exist")
    resume = find_resume_checkpoint(load)
    if resume is not None:
        cfg.model = checkpoint_model_config(resume, "checkpoint.load")
    elif pretrained is not None:
        cfg.model = checkpoint_model_config(pretrained, "checkpoint.pretrained_checkpoint")
    if cfg.model is None:
        raise UserInputError("model: no architecture (set a recipe or checkpoint.pretrained_checkpoint)")
    return resume, pretrained


def reseed(seed: int, device: torch.device, tp_rank: int) -> None:
    """Weights are drawn from the CPU generator (use_cpu_initialization) and the model-parallel tracker."""
    torch.manual_seed(seed)
    if device.type == "cuda":
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)
    else:
        from gemma3_runtime.compat.megatron_cpu import cpu_rng_tracker

        cpu_rng_tracker(seed, tp_rank=tp_rank)


def task_items(cfg: ConfigContainer) -> list:
    """Held-out prompt/completion items scored for task accuracy (the bundled held-out split by default)."""
    from gemma3_runtime.data import synthetic

    paths = list(cfg.data.valid_paths or [])
    if not paths and cfg.data.data_paths and any(p.startswith("bundled:") for p in cfg.data.data_paths):
        paths = [str(synthetic.bundled_path("heldout"))]
    if not paths:
        raise UserInputError(
            "eval.task_accuracy=true needs data.valid_paths with prompt/completion rows (or the bundled dataset)"
        )
    items = [it for p in paths for it in synthetic.load_items(p)]
    return items[: cfg.eval.task_items]

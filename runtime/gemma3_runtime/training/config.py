"""The run configuration: one typed container, YAML round trip (`run_config.yaml`) and dotted overrides.

Why dataclasses and not OmegaConf/Hydra: every field has one Python type we can check ourselves, so a bad override
fails with ONE line that names the key and the expected type (and an unknown key suggests the nearest valid ones),
and the YAML written into each checkpoint is plain data any tool can read. This module is torch-free.

Sections: model (Gemma3Config.to_dict(), owned by the model package), train, optimizer, scheduler, data, eval,
checkpoint, logging, parallelism, peft (None or the peft package's config dataclass) and perf (speed switches).
Type checking lives in config_types.py; the checks across fields (batch divisibility, parallel sizes, ...) in
validate.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.perf.config import PerfConfig
from gemma3_runtime.training.config_types import (
    all_keys,
    check_known,
    coerce,
    dataclass_from_dict,
    field_types,
    is_plain_str,
    shown,
    to_plain,
)

__all__ = [
    "RUN_CONFIG_FORMAT",
    "CheckpointConfig",
    "ConfigContainer",
    "DataConfig",
    "EvalConfig",
    "LoggingConfig",
    "OptimizerConfig",
    "ParallelismConfig",
    "SchedulerConfig",
    "TrainConfig",
    "all_keys",
    "apply_overrides",
    "model_config_from_dict",
    "parse_override",
    "peft_config_from_dict",
    "set_dotted",
]

RUN_CONFIG_FORMAT = "gemma3-launch/megatron/v1"


@dataclass
class TrainConfig:
    """How many steps, how big a batch, which seed and numerics."""

    train_iters: int = 100
    global_batch_size: int = 8
    micro_batch_size: int = 1
    seed: int = 1234
    #: "auto": bf16 weights + fp32 main weights on CUDA, fp32 on CPU (bf16 on a CPU is slow and not what we verify).
    precision: Literal["auto", "fp32", "bf16-mixed"] = "auto"
    #: None: cuda when available (logged), else cpu. Set by `gemma3-runtime run --device`.
    device: str | None = None
    #: Save and stop (exit 0) when the iteration is a multiple of this - a planned interruption (Megatron's
    #: --exit-interval); the next start resumes.
    exit_interval: int | None = None
    #: Activation recompute (megatron-core's): null keeps every layer's activations for the backward; "full"
    #: recomputes whole layers in the backward (the memory of long contexts, e.g. under context parallelism);
    #: "selective" recomputes the core attention only. Same losses and gradients either way.
    recompute_granularity: Literal["full", "selective"] | None = None
    #: "full" only: "uniform" = checkpoint units of recompute_num_layers layers, "block" = recompute the first
    #: recompute_num_layers layers of each pipeline stage and keep the rest. Default with "full": "uniform".
    recompute_method: Literal["uniform", "block"] | None = None
    #: "full" only: layers per unit ("uniform") or layers recomputed ("block"). Default with "full": 1.
    recompute_num_layers: int | None = None

    def recompute_fields(self) -> dict[str, Any]:
        """The provider's recompute fields, with "full"'s defaults filled in (uniform, one layer per unit)."""
        full = self.recompute_granularity == "full"
        return {
            "recompute_granularity": self.recompute_granularity,
            "recompute_method": self.recompute_method or ("uniform" if full else None),
            "recompute_num_layers": self.recompute_num_layers or (1 if full else None),
        }


@dataclass
class OptimizerConfig:
    """Adam(W). On CUDA megatron-core's optimizer (distributed when asked); on CPU torch.optim.AdamW."""

    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    use_distributed_optimizer: bool = True


@dataclass
class SchedulerConfig:
    """Linear warmup from lr_warmup_init, then decay to optimizer.min_lr over lr_decay_iters (default train_iters)."""

    lr_warmup_iters: int = 0
    lr_decay_iters: int | None = None
    lr_decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    lr_warmup_init: float = 0.0


@dataclass
class DataConfig:
    """Where batches come from.

    kind=mock: seeded random tokens (no files). kind=indexed: Megatron .bin/.idx prefixes (optionally weighted:
    ["0.7", "a", "0.3", "b"]) made by `gemma3-runtime prepare-data`. kind=text: pretraining documents (the
    `text_key` column) from JSONL / Parquet / Arrow files or directories or `hf:OWNER/NAME` hub datasets, read with
    HF `datasets`. kind=sft: prompt/completion or chat `messages` rows from the same kinds of sources; `bundled:`
    names the dataset shipped with the package. text and sft sources are tokenized once per dataset fingerprint and
    cached in `cache_dir` (data/token_cache.py).
    """

    kind: Literal["mock", "indexed", "sft", "text"] = "mock"
    data_paths: list[str] | None = None
    valid_paths: list[str] | None = None
    split: str = "9999,8,2"
    seq_length: int = 4096
    #: HF tokenizer directory; default: the pretrained checkpoint's tokenizer/ copy.
    tokenizer: str | None = None
    #: SFT: pack several examples into one sequence (attention does not cross example boundaries, see data/sft.py).
    packing: bool = True
    #: Vocabulary of mock tokens (default: the model's vocabulary).
    mock_vocab_size: int | None = None
    #: SFT only: share of the train file held out for validation when valid_paths is not given.
    valid_fraction: float = 0.0
    #: kind=text: the column holding each document's text.
    text_key: str = "text"
    #: `datasets` sources: the split to read (hub ids and save_to_disk directories; local files are one split).
    hf_split: str = "train"
    #: `datasets` hub ids: the configuration (subset) name; None: the dataset's default.
    hf_subset: str | None = None
    #: Tokenization cache (and megatron's index cache); default: <checkpoint.save>/data_cache.
    cache_dir: str | None = None


@dataclass
class EvalConfig:
    """Held-out loss every `interval` steps (and at the start and end), optionally task accuracy on the SFT task."""

    interval: int | None = None
    iters: int = 1
    at_start: bool = True
    #: Greedy-decode held-out items and score them against the expected answers (bundled dataset / scorer).
    task_accuracy: bool = False
    task_items: int = 50
    task_max_new_tokens: int = 16


@dataclass
class CheckpointConfig:
    """Where to save, what to resume from, what to start a finetune from."""

    save: str | None = None
    #: resume from here (default: the save dir, so a restarted job continues where it stopped)
    load: str | None = None
    pretrained_checkpoint: str | None = None
    save_interval: int | None = None
    save_optim: bool = True
    save_rng: bool = True
    #: Save when training ends (in addition to save_interval and preemption).
    save_at_end: bool = True
    #: Write interval saves in the background (checkpoint/async_save.py): the loop is blocked only for the copy to
    #: host memory and the fork of the writer; the tracker is renamed once every rank's write finished. Off by
    #: default: the host then holds a second copy of the training state while it is written.
    async_save: bool = False


@dataclass
class LoggingConfig:
    log_interval: int = 10
    #: Default: <checkpoint.save>/tensorboard.
    tensorboard_dir: str | None = None
    #: W&B (training/wandb_run.py): on when WANDB_API_KEY is set, WANDB_MODE is online/offline, or a project is named
    #: here. None: the environment's WANDB_PROJECT, else "gemma3-launch".
    wandb_project: str | None = None
    #: None: the environment's WANDB_ENTITY (else the API key's default entity).
    wandb_entity: str | None = None
    #: The W&B run name; None: the run's name.
    wandb_exp_name: str | None = None
    wandb_tags: list[str] | None = None
    #: Bound on connecting to W&B; past it the job continues with an offline W&B run.
    wandb_init_timeout_s: float = 15.0
    loss_curve_png: bool = True
    #: None: a progress bar only on an interactive terminal.
    progress_bar: bool | None = None


@dataclass
class ParallelismConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    context_parallel_size: int = 1
    sequence_parallel: bool = False


@dataclass
class ConfigContainer:
    """Everything one run needs. `model` is a Gemma3Config (architecture only), `peft` None or a PEFT config."""

    name: str = "gemma3"
    model: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    parallelism: ParallelismConfig = field(default_factory=ParallelismConfig)
    peft: Any = None
    #: GPU speed switches (gemma3_runtime.perf); every one computes the same function as its plain twin.
    perf: PerfConfig = field(default_factory=PerfConfig)

    # ---- YAML -------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": RUN_CONFIG_FORMAT}
        for f in dataclasses.fields(self):
            out[f.name] = to_plain(getattr(self, f.name))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save_yaml(self, path: str | os.PathLike) -> None:
        """Write atomically (temp name + rename) so a reader never sees half a file."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(self.to_yaml())
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ConfigContainer:
        data = dict(data)
        fmt = data.pop("format", RUN_CONFIG_FORMAT)
        if fmt != RUN_CONFIG_FORMAT:
            raise UserInputError(f"{source}: format {shown(fmt)} is not {RUN_CONFIG_FORMAT!r}")
        cfg = cls()
        for key, value in data.items():
            if not isinstance(key, str):
                raise UserInputError(f"{source}: expected text keys, got {shown(key)}")
            check_known(cfg, key, "")
            if key == "model":
                cfg.model = model_config_from_dict(value, f"{source}: model") if value is not None else None
            elif key == "peft":
                cfg.peft = peft_config_from_dict(value, f"{source}: peft") if value is not None else None
            else:
                setattr(cfg, key, coerce(value, field_types(cls)[key], key))
        return cfg

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> ConfigContainer:
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"{path}: no such file (expected a run_config.yaml)")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise UserInputError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
        if not isinstance(data, dict):
            raise UserInputError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(data, str(path))


# ---- model / peft sections (owned by other packages; imported lazily) ----------------------------------------------
def model_config_from_dict(data: Any, where: str) -> Any:
    """Gemma3Config from its to_dict() form."""
    from gemma3_runtime.model.config import Gemma3Config

    if not isinstance(data, dict):
        raise UserInputError(f"{where}: expected a mapping of Gemma3Config fields")
    try:
        return Gemma3Config.from_dict(data, where)
    except ValueError as exc:
        raise UserInputError(" ".join(str(exc).split())) from None


def peft_config_from_dict(data: Any, where: str) -> Any:
    """The peft package's config from its dict form (unknown keys suggest the nearest, values type-checked)."""
    from gemma3_runtime.peft.config import PeftConfig

    if not isinstance(data, dict):
        raise UserInputError(f"{where}: expected a mapping of PEFT fields")
    return dataclass_from_dict(PeftConfig, data, "peft")


# ---- overrides -----------------------------------------------------------------------------------------------------
def apply_overrides(cfg: ConfigContainer, overrides: Sequence[str]) -> ConfigContainer:
    """Apply `section.key=value` overrides in order; values are YAML (`true`, `64`, `[a, b]`, `null`).

    The one override parser of the runtime (the launcher's spec `overrides` and `gemma3-runtime run KEY=VALUE` both
    end here). A value replaces the field's value: `data.data_paths=[a, b]` sets the whole list.
    """
    for item in overrides:
        key, raw = parse_override(item)
        set_dotted(cfg, key, raw)
    return cfg


def parse_override(item: str) -> tuple[str, str]:
    """`KEY=VALUE` -> (key, raw value); the key is a dotted name, the value its text after the first `=`."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or key.startswith("-"):
        shown_item = key if not sep else f"{key}=..."
        raise UserInputError(
            f"override {shown(shown_item)}: expected KEY=VALUE (a dotted config key), e.g. train.train_iters=10"
        )
    return key, raw


def set_dotted(cfg: ConfigContainer, key: str, raw: str) -> None:
    """Set one dotted key from its raw string, type-checked against the field's annotation.

    Frozen sections (Gemma3Config, PeftConfig) are rebuilt with dataclasses.replace, which re-runs their validation.
    """
    parts = key.split(".")
    if parts[0] in ("model", "peft") and len(parts) == 1:
        raise UserInputError(f"override {key!r}: set individual fields, e.g. {key}.<field>=VALUE")
    _set_in(cfg, parts, 0, raw, key, cfg)


def _set_in(obj: Any, parts: list[str], depth: int, raw: str, key: str, root: Any) -> Any:
    prefix = ".".join(parts[:depth])
    if obj is None:
        hint = " (pass --peft lora|dora first)" if prefix == "peft" else ""
        raise UserInputError(f"override {key!r}: section {prefix!r} is not set{hint}")
    if not dataclasses.is_dataclass(obj):
        raise UserInputError(f"override {key!r}: {prefix!r} is a value, not a section")
    name = parts[depth]
    check_known(obj, name, prefix, root=root)
    if depth == len(parts) - 1:
        hint_type = field_types(type(obj)).get(name, Any)
        value = coerce(_parse_value(raw, hint_type), hint_type, key)
    else:
        value = _set_in(getattr(obj, name), parts, depth + 1, raw, key, root)
    if type(obj).__dataclass_params__.frozen:
        try:
            return dataclasses.replace(obj, **{name: value})
        except (ValueError, TypeError) as exc:
            raise UserInputError(f"override {key!r}: {' '.join(str(exc).split())}") from None
    setattr(obj, name, value)
    return obj


def _parse_value(raw: str, hint: Any) -> Any:
    """YAML-typed, except that a string field keeps the text as typed (so `checkpoint.save=123` is the path "123");
    a JSON string literal is the string it quotes (how the launcher passes the spec's strings: `"null"` is a name)."""
    if is_plain_str(hint) and raw.strip() not in ("null", "~", "None"):
        return _json_string(raw)
    try:
        return yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError:
        return raw


def _json_string(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            value = json.loads(raw)
        except ValueError:
            return raw
        if isinstance(value, str):
            return value
    return raw

"""The run configuration: one typed container, YAML round trip (`run_config.yaml`) and dotted overrides.

Why dataclasses and not OmegaConf/Hydra: every field has one Python type we can check ourselves, so a bad override
fails with ONE line that names the key and the expected type (and an unknown key suggests the nearest valid ones),
and the YAML written into each checkpoint is plain data any tool can read. This module is torch-free.

Sections: model (Gemma3Config.to_dict(), owned by the model package), train, optimizer, scheduler, data, eval,
checkpoint, logging, parallelism, peft (None or the peft package's config dataclass) and perf (speed switches).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.perf.config import PerfConfig

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
    ["0.7", "a", "0.3", "b"]) made by `gemma3-runtime prepare-data`. kind=sft: JSONL with prompt/completion or chat
    `messages`; `bundled` names the dataset shipped with the package.
    """

    kind: Literal["mock", "indexed", "sft"] = "mock"
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


@dataclass
class LoggingConfig:
    log_interval: int = 10
    #: Default: <checkpoint.save>/tensorboard.
    tensorboard_dir: str | None = None
    wandb_project: str | None = None
    wandb_exp_name: str | None = None
    loss_curve_png: bool = True
    #: None: a progress bar only on an interactive terminal.
    progress_bar: bool | None = None


@dataclass
class ParallelismConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
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
            out[f.name] = _to_plain(getattr(self, f.name))
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
            raise UserInputError(f"{source}: format {fmt!r} is not {RUN_CONFIG_FORMAT!r}")
        cfg = cls()
        for key, value in data.items():
            _check_known(cfg, key, "")
            if key == "model":
                cfg.model = model_config_from_dict(value, f"{source}: model") if value is not None else None
            elif key == "peft":
                cfg.peft = peft_config_from_dict(value, f"{source}: peft") if value is not None else None
            else:
                setattr(cfg, key, _coerce(value, _field_types(cls)[key], key))
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
    """The peft package's config from its dict form."""
    from gemma3_runtime.peft import config as peft_config_module

    if not isinstance(data, dict):
        raise UserInputError(f"{where}: expected a mapping of PEFT fields")
    cls = peft_config_module.PeftConfig
    if hasattr(cls, "from_dict"):
        return cls.from_dict(data)
    return _dataclass_from_dict(cls, data, "peft")


# ---- overrides -----------------------------------------------------------------------------------------------------
def apply_overrides(cfg: ConfigContainer, overrides: Sequence[str]) -> ConfigContainer:
    """Apply `section.key=value` overrides in order; values are YAML (`true`, `64`, `[a, b]`, `null`)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserInputError(f"override {item!r}: expected KEY=VALUE, e.g. train.global_batch_size=64")
        set_dotted(cfg, key, raw)
    return cfg


def set_dotted(cfg: ConfigContainer, key: str, raw: str) -> None:
    """Set one dotted key from its raw string, type-checked against the field's annotation.

    Frozen sections (Gemma3Config) are rebuilt with dataclasses.replace, which re-runs their validation.
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
    _check_known(obj, name, prefix, root=root)
    if depth == len(parts) - 1:
        hint_type = _field_types(type(obj)).get(name, Any)
        value = _coerce(_parse_value(raw, hint_type), hint_type, key)
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
    """YAML-typed, except that a string field keeps the text as typed (so `checkpoint.save=123` is the path "123")."""
    if _is_plain_str(hint) and raw.strip() not in ("null", "~", "None"):
        return raw
    try:
        return yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError:
        return raw


def _is_plain_str(hint: Any) -> bool:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return hint is str or (_is_union(hint) and args == [str])


def all_keys(obj: Any, prefix: str = "") -> list[str]:
    """Every dotted key reachable from `obj` (sections that are None contribute only their own name)."""
    keys: list[str] = []
    for f in dataclasses.fields(obj):
        dotted = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            keys.extend(all_keys(value, dotted + "."))
        else:
            keys.append(dotted)
    return keys


def _check_known(obj: Any, name: str, prefix: str, root: Any = None) -> None:
    names = [f.name for f in dataclasses.fields(obj)]
    if name in names:
        return
    dotted = f"{prefix}.{name}" if prefix else name
    candidates = all_keys(root if root is not None else obj)
    if root is None and prefix:
        candidates = [f"{prefix}.{k}" for k in candidates]
    siblings = [f"{prefix}.{n}" if prefix else n for n in names]
    near = difflib.get_close_matches(dotted, siblings, n=3, cutoff=0.6)
    near += [k for k in difflib.get_close_matches(dotted, candidates, n=3, cutoff=0.5) if k not in near]
    near = near[:3]
    if not near:  # a misspelled section with a right leaf: match on the leaf name
        leaf = name.lower()
        near = [k for k in candidates if k.rsplit(".", 1)[-1] == leaf][:3]
    suggestion = (
        f"; did you mean {', '.join(near)}?"
        if near
        else f"; valid keys under {prefix or 'the top level'}: {', '.join(names)}"
    )
    raise UserInputError(f"unknown config key {dotted!r}{suggestion}")


# ---- type checking -------------------------------------------------------------------------------------------------
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _type_name(hint: Any) -> str:
    if hint is Any:
        return "any value"
    if _is_union(hint):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        inner = (typing.get_args(hint) or (Any,))[0]
        return f"a list of {_type_name(inner)}"
    if origin is dict:
        return "a mapping"
    if hint is type(None):
        return "null"
    if dataclasses.is_dataclass(hint):
        return f"a {hint.__name__} mapping"
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Return `value` as `hint` or raise naming the key and the expected type. No silent lossy conversions."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if _is_union(hint):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserInputError:
                continue
        raise _type_error(key, value, hint)
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise _type_error(key, value, hint)
    if origin is list:
        (inner,) = typing.get_args(hint) or (Any,)
        if isinstance(value, (list, tuple)):
            return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        if inner is str and isinstance(value, str):
            return [value]
        raise _type_error(key, value, hint)
    if origin is tuple:
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
        raise _type_error(key, value, hint)
    if origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise _type_error(key, value, hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, value, hint)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, value, hint)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(key, value, hint)
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _type_error(key, value, hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return _dataclass_from_dict(hint, value, key)
        raise _type_error(key, value, hint)
    return value


def _dataclass_from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = _field_types(cls)
    obj = cls()
    for k, v in data.items():
        _check_known(obj, k, prefix)
        setattr(obj, k, _coerce(v, hints[k], f"{prefix}.{k}"))
    return obj


def _type_error(key: str, value: Any, hint: Any) -> UserInputError:
    return UserInputError(f"config key {key!r}: expected {_type_name(hint)}, got {value!r} ({type(value).__name__})")


def _to_plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return _to_plain(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return str(value)

"""`Gemma3Config`: the architecture of a Gemma 3 text model, independent of any framework.

Pure python (no torch) so the launcher-side tooling and `run_config.yaml` handling can use it cheaply.
It reads Hugging Face `config.json` dicts in both the transformers 4.x layout (`rope_theta`, `rope_local_base_freq`,
`rope_scaling`, `sliding_window_pattern`) and the 5.x layout (`rope_parameters` keyed by layer type, `layer_types`),
and takes the text part of a multimodal (`Gemma3ForConditionalGeneration`) checkpoint. Which layers are global comes
from `layer_types` when present: never assume the 5:1 pattern silently (Megatron-Bridge does, see reference 2.4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .presets import PRESETS as _PRESETS

SLIDING = "sliding_attention"
FULL = "full_attention"
_LAYER_TYPES = (SLIDING, FULL)
TEXT_MODEL_TYPE = "gemma3_text"
MULTIMODAL_MODEL_TYPE = "gemma3"
VOCAB_PAD_MULTIPLE = 128

# transformers' Gemma3TextConfig defaults: a multimodal checkpoint's `text_config` omits fields equal to these.
_HF_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131072,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "use_bidirectional_attention": False,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "sliding_window_pattern": 6,
}


class Gemma3ConfigError(ValueError):
    """A config that is not a (supported) Gemma 3 text config; the message names the source and the field."""


def default_layer_types(num_layers: int, pattern: int = 6) -> tuple[str, ...]:
    """HF's rule: 0-based layer i is sliding iff (i + 1) % pattern != 0."""
    return tuple(SLIDING if (i + 1) % pattern else FULL for i in range(num_layers))


@dataclass(frozen=True)
class Gemma3Config:
    """Architecture only (no parallelism, dtype or training settings)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    query_pre_attn_scalar: float
    sliding_window: int
    layer_types: tuple[str, ...]
    max_position_embeddings: int
    rope_local_base: float = 10_000.0
    rope_global_base: float = 1_000_000.0
    rope_global_scaling_factor: float = 1.0  # linear scaling, global layers only
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    bos_token_id: int | None = 2
    eos_token_id: int | list[int] | None = 1
    pad_token_id: int | None = 0
    # provenance, not architecture: imported from the text part of a Gemma3ForConditionalGeneration checkpoint
    from_multimodal: bool = field(default=False, compare=False)
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        self.validate()

    # ---- derived values -------------------------------------------------------------------------------------
    @property
    def padded_vocab_size(self) -> int:
        """HF vocab rounded up to a multiple of 128, independent of TP so checkpoints reshard."""
        return -(-self.vocab_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE

    @property
    def softmax_scale(self) -> float:
        return self.query_pre_attn_scalar**-0.5

    @property
    def global_layers(self) -> tuple[int, ...]:
        """0-based indices of full-attention layers."""
        return tuple(i for i, t in enumerate(self.layer_types) if t == FULL)

    def is_sliding(self, layer_index: int) -> bool:
        """`layer_index` is 0-based (HF); megatron's layer_number is 1-based: pass layer_number - 1."""
        return self.layer_types[layer_index] == SLIDING

    def num_parameters(self) -> int:
        """Parameters of the HF model (tied head counted once, unpadded vocab)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        h, g = self.num_attention_heads, self.num_kv_heads
        attn = d * (h + 2 * g) * hd + h * hd * d + 2 * hd
        mlp = 3 * d * f
        per_layer = attn + mlp + 4 * d
        return self.vocab_size * d + self.num_layers * per_layer + d

    # ---- validation -----------------------------------------------------------------------------------------
    def validate(self, source: str = "Gemma3Config") -> None:
        def bad(field_name: str, expected: str) -> Gemma3ConfigError:
            value = getattr(self, field_name)
            return Gemma3ConfigError(f"{source}: {field_name}={value!r}, expected {expected}")

        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_attention_heads",
            "num_kv_heads",
            "head_dim",
            "sliding_window",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise bad(name, "a positive integer")
        if self.num_attention_heads % self.num_kv_heads:
            raise bad("num_kv_heads", f"a divisor of num_attention_heads ({self.num_attention_heads})")
        if len(self.layer_types) != self.num_layers:
            raise Gemma3ConfigError(
                f"{source}: layer_types has {len(self.layer_types)} entries, expected num_layers={self.num_layers}"
            )
        unknown = sorted(set(self.layer_types) - set(_LAYER_TYPES))
        if unknown:
            raise Gemma3ConfigError(f"{source}: layer_types contains {unknown}, expected only {list(_LAYER_TYPES)}")
        for name in (
            "query_pre_attn_scalar",
            "rope_local_base",
            "rope_global_base",
            "rope_global_scaling_factor",
            "rms_norm_eps",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise bad(name, "a positive number")

    # ---- presets --------------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, size: str) -> Gemma3Config:
        """The released sizes (docs/MODEL.md): 270m, 1b, 4b, 12b, 27b."""
        key = size.lower().removeprefix("gemma3-").removeprefix("gemma-3-")
        if key not in _PRESETS:
            raise Gemma3ConfigError(f"preset {size!r} is unknown, expected one of {sorted(_PRESETS)}")
        values = dict(_PRESETS[key])
        values["layer_types"] = default_layer_types(values["num_layers"])
        return cls(name=key, **values)

    # ---- HF config.json -------------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, config: Mapping[str, Any], source: str = "config.json") -> Gemma3Config:
        """From an HF config dict (4.x or 5.x layout; text-only or multimodal)."""
        if not isinstance(config, Mapping):
            raise Gemma3ConfigError(f"{source}: expected a JSON object, got {type(config).__name__}")
        model_type = config.get("model_type")
        from_multimodal = False
        if model_type == MULTIMODAL_MODEL_TYPE:
            text = config.get("text_config")
            if not isinstance(text, Mapping):
                raise Gemma3ConfigError(
                    f"{source}: model_type 'gemma3' (multimodal) needs a 'text_config' object, none found"
                )
            text_type = text.get("model_type", TEXT_MODEL_TYPE)
            if text_type != TEXT_MODEL_TYPE:
                raise Gemma3ConfigError(
                    f"{source}: text_config.model_type {text_type!r} is not Gemma 3 (expected {TEXT_MODEL_TYPE!r})"
                )
            config, from_multimodal, source = text, True, f"{source} (text_config)"
        elif model_type != TEXT_MODEL_TYPE:
            raise Gemma3ConfigError(
                f"{source}: model_type {model_type!r} is not Gemma 3 "
                f"(expected {TEXT_MODEL_TYPE!r} or {MULTIMODAL_MODEL_TYPE!r})"
            )

        def get(key: str) -> Any:
            return config[key] if config.get(key) is not None else _HF_TEXT_DEFAULTS.get(key)

        def need(cond: bool, key: str, expected: str) -> None:
            if not cond:
                raise Gemma3ConfigError(f"{source}: {key}={config.get(key)!r} is unsupported, expected {expected}")

        need(
            get("hidden_activation") in ("gelu_pytorch_tanh", "gelu_tanh")
            or config.get("hidden_act") == "gelu_pytorch_tanh",
            "hidden_activation",
            "'gelu_pytorch_tanh'",
        )
        need(get("final_logit_softcapping") is None, "final_logit_softcapping", "null (no Gemma 3 release uses it)")
        need(get("attn_logit_softcapping") is None, "attn_logit_softcapping", "null (no Gemma 3 release uses it)")
        need(not get("attention_bias"), "attention_bias", "false")
        need(not get("use_bidirectional_attention"), "use_bidirectional_attention", "false (EmbeddingGemma)")
        need(get("tie_word_embeddings") in (True, None), "tie_word_embeddings", "true")

        num_layers = get("num_hidden_layers")
        layer_types = config.get("layer_types")
        if layer_types is None:
            pattern = config.get("sliding_window_pattern") or config.get("_sliding_window_pattern") or 6
            need(isinstance(pattern, int) and pattern > 0, "sliding_window_pattern", "a positive integer")
            layer_types = default_layer_types(num_layers, pattern)
        local_base, global_base, factor = _read_rope(config, source)

        values = dict(
            vocab_size=get("vocab_size"),
            hidden_size=get("hidden_size"),
            intermediate_size=get("intermediate_size"),
            num_layers=num_layers,
            num_attention_heads=get("num_attention_heads"),
            num_kv_heads=get("num_key_value_heads"),
            head_dim=get("head_dim"),
            query_pre_attn_scalar=get("query_pre_attn_scalar"),
            sliding_window=get("sliding_window"),
            layer_types=tuple(layer_types),
            max_position_embeddings=get("max_position_embeddings"),
            rope_local_base=float(local_base),
            rope_global_base=float(global_base),
            rope_global_scaling_factor=float(factor),
            rms_norm_eps=float(get("rms_norm_eps")),
            initializer_range=float(get("initializer_range")),
            bos_token_id=get("bos_token_id"),
            eos_token_id=get("eos_token_id"),
            pad_token_id=get("pad_token_id"),
            from_multimodal=from_multimodal,
            name=str(config.get("_name_or_path") or ""),
        )
        try:
            return cls(**values)
        except Gemma3ConfigError as exc:
            raise Gemma3ConfigError(str(exc).replace("Gemma3Config", source, 1)) from None

    def to_hf(self, layout: str = "5.x") -> dict[str, Any]:
        """A text-only `Gemma3ForCausalLM` config.json dict.

        layout "5.x" (what transformers >= 5 writes: rope_parameters per layer type) or "4.x" (rope_theta,
        rope_local_base_freq, rope_scaling). `layer_types` is always emitted so the layer pattern is explicit.
        """
        if layout not in ("5.x", "4.x"):
            raise Gemma3ConfigError(f"to_hf: layout={layout!r}, expected '5.x' or '4.x'")
        qpas = self.query_pre_attn_scalar
        out: dict[str, Any] = {
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": TEXT_MODEL_TYPE,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "rms_norm_eps": self.rms_norm_eps,
            "use_cache": True,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "bos_token_id": self.bos_token_id,
            "tie_word_embeddings": True,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "query_pre_attn_scalar": int(qpas) if float(qpas).is_integer() else qpas,
            "sliding_window": self.sliding_window,
            "layer_types": list(self.layer_types),
            "final_logit_softcapping": None,
            "attn_logit_softcapping": None,
            "use_bidirectional_attention": False,
        }
        factor = self.rope_global_scaling_factor
        if layout == "5.x":
            full: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_global_base}
            if factor != 1.0:
                full = {"rope_type": "linear", "factor": factor, "rope_theta": self.rope_global_base}
            out["rope_parameters"] = {
                SLIDING: {"rope_type": "default", "rope_theta": self.rope_local_base},
                FULL: full,
            }
        else:
            out["rope_theta"] = self.rope_global_base
            out["rope_local_base_freq"] = self.rope_local_base
            out["rope_scaling"] = {"rope_type": "linear", "factor": factor} if factor != 1.0 else None
        return out

    # ---- run_config.yaml ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-YAML-safe dict (lists, no tuples)."""
        out = dataclasses.asdict(self)
        out["layer_types"] = list(self.layer_types)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "run_config.yaml model") -> Gemma3Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise Gemma3ConfigError(f"{source}: unknown keys {unknown}, expected a subset of {sorted(known)}")
        missing = sorted(
            f.name for f in dataclasses.fields(cls) if f.name not in values and f.default is dataclasses.MISSING
        )
        if missing:
            raise Gemma3ConfigError(f"{source}: missing keys {missing}")
        try:
            cfg = cls(**dict(values))
        except Gemma3ConfigError as exc:
            raise Gemma3ConfigError(str(exc).replace("Gemma3Config", source, 1)) from None
        return cfg


def _rope_entry(params: Any, key: str, source: str) -> tuple[float | None, float]:
    """(theta, linear factor) of one rope_parameters entry."""
    if params is None:
        return None, 1.0
    if not isinstance(params, Mapping):
        raise Gemma3ConfigError(f"{source}: rope_parameters[{key!r}] must be an object, got {params!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", params.get("base"))
    if rope_type == "default":
        return theta, 1.0
    if rope_type == "linear":
        return theta, float(params.get("factor", 1.0))
    raise Gemma3ConfigError(
        f"{source}: rope_parameters[{key!r}].rope_type={rope_type!r} is unsupported, expected 'default' or 'linear'"
    )


def _read_rope(config: Mapping[str, Any], source: str) -> tuple[float, float, float]:
    """(local base, global base, global linear factor) from the 5.x or 4.x layout."""
    local = config.get("rope_local_base_freq")
    global_ = config.get("rope_theta")
    factor = 1.0
    scaling = config.get("rope_scaling")
    if isinstance(scaling, Mapping):
        _, factor = _rope_entry(scaling, "rope_scaling", source)
    params = config.get("rope_parameters")
    if isinstance(params, Mapping):
        if "rope_type" in params or "rope_theta" in params:  # a single, non-keyed entry: the global layers'
            theta, factor = _rope_entry(params, "full_attention", source)
            global_ = theta if theta is not None else global_
        else:
            full = params.get(FULL, params.get("global"))
            sliding = params.get(SLIDING, params.get("local"))
            theta, factor_full = _rope_entry(full, FULL, source)
            if full is not None:
                factor = factor_full
            global_ = theta if theta is not None else global_
            theta_local, factor_local = _rope_entry(sliding, SLIDING, source)
            if factor_local != 1.0:
                raise Gemma3ConfigError(
                    f"{source}: rope_parameters['sliding_attention'] is scaled "
                    f"(factor {factor_local}); Gemma 3 local layers are never scaled"
                )
            local = theta_local if theta_local is not None else local
    if local is None:
        local = _HF_TEXT_DEFAULTS["rope_local_base_freq"]
    if global_ is None:
        global_ = _HF_TEXT_DEFAULTS["rope_theta"]
    return float(local), float(global_), float(factor)


PRESET_NAMES = tuple(_PRESETS)

"""`PeftConfig`: what to adapt and how (the training config container's `peft` slot).

Torch-free on purpose: the config container, YAML round-trips and input validation must not pull torch.
Defaults follow the 1B PEFT recipe of the anchor (rank 8, alpha 16, all four linears, xavier A, zero B).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from gemma3_runtime.errors import UserInputError

#: The four linears of a Gemma 3 layer an adapter can wrap (megatron local-spec names, docs/CONTRACTS.md).
ALL_TARGETS: tuple[str, ...] = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")
KINDS: tuple[str, ...] = ("lora", "dora")
A_INITS: tuple[str, ...] = ("xavier", "kaiming")


@dataclass(frozen=True)
class PeftConfig:
    """LoRA / DoRA hyper-parameters. `alpha / rank` scales the low-rank update, as in HF PEFT (no rsLoRA).

    Frozen so that every change (dotted overrides use `dataclasses.replace`) re-runs the validation.
    """

    kind: str = "lora"
    targets: list[str] = field(default_factory=lambda: list(ALL_TARGETS))
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    #: initialisation of A (linear_in); B (linear_out) always starts at zero so training starts from the base model.
    init: str = "xavier"
    #: seed of the adapter initialisation; the full (unsharded) A is drawn from it, so TP=1 and TP=N start identical.
    seed: int = 1234

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", list(self.targets))
        self.validate()

    @property
    def scale(self) -> float:
        return float(self.alpha) / float(self.rank)

    def validate(self) -> None:
        """Raise `UserInputError` naming the first bad field (one line, for exit code 2)."""
        if self.kind not in KINDS:
            raise UserInputError(f"peft.kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.targets:
            raise UserInputError(f"peft.targets: expected at least one of {', '.join(ALL_TARGETS)}, got none")
        for target in self.targets:
            if target not in ALL_TARGETS:
                raise UserInputError(
                    f"peft.targets: unknown target module {target!r}; expected some of {', '.join(ALL_TARGETS)}"
                )
        if len(set(self.targets)) != len(self.targets):
            raise UserInputError(f"peft.targets: duplicate entries in {self.targets}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise UserInputError(f"peft.rank: expected a positive integer, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise UserInputError(f"peft.alpha: expected a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= float(self.dropout) < 1.0:
            raise UserInputError(f"peft.dropout: expected a number in [0, 1), got {self.dropout!r}")
        if self.init not in A_INITS:
            raise UserInputError(f"peft.init: expected one of {', '.join(A_INITS)}, got {self.init!r}")

    @classmethod
    def for_kind(cls, kind: str, **overrides: Any) -> PeftConfig:
        """The recipe default for `kind` ("lora" | "dora"), e.g. for `gemma3_1b_finetune_config(peft="dora")`."""
        return cls(kind=kind, **overrides)

    for_scheme = for_kind  # the name the training recipes look for

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PeftConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserInputError(f"peft.{unknown[0]}: unknown field; expected one of {', '.join(sorted(known))}")
        return cls(**dict(data))

"""The `gemma3-runtime run` arguments -> a validated ConfigContainer, torch-free.

One definition of the `run` command line (`add_run_arguments`), one way from its arguments to the config
(`build_run_config`: recipe + flags + `KEY=VALUE` overrides), used by the runtime's CLI and by the launcher, which
checks the exact argv its plan will run (`validate_run_argv`) on the login node, without torch.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.training.config import ConfigContainer, apply_overrides
from gemma3_runtime.training.config_types import shown
from gemma3_runtime.training.recipes import get_recipe
from gemma3_runtime.training.validate import DEVICES, validate

__all__ = ["UserInputError", "add_run_arguments", "build_run_config", "config_from_args", "validate_run_argv"]

PEFT_CHOICES = ("lora", "dora", "none")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments that choose the run's configuration (the CLI adds --dry-run and --world-size)."""
    parser.add_argument(
        "--recipe",
        required=True,
        help="recipe function name, e.g. gemma3_1b_finetune_config (the _config suffix is optional)",
    )
    parser.add_argument(
        "--pretrained-checkpoint",
        "--pretrained_checkpoint",
        dest="pretrained_checkpoint",
        default=None,
        help="Megatron checkpoint to finetune from (e.g. from `convert import`)",
    )
    parser.add_argument(
        "--peft",
        "--peft_scheme",
        "--peft-scheme",
        dest="peft",
        choices=list(PEFT_CHOICES),
        default=None,
        help="parameter-efficient finetuning (finetune recipes only)",
    )
    parser.add_argument("--device", choices=list(DEVICES), default=None, help="default: cuda when available (logged)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")


def build_run_config(
    recipe_name: str,
    *,
    pretrained_checkpoint: str | None = None,
    peft: str | None = None,
    device: str | None = None,
    overrides: Sequence[str] = (),
) -> ConfigContainer:
    """Recipe + flags + overrides -> ConfigContainer (not yet validated; every error is a UserInputError)."""
    recipe = get_recipe(recipe_name)
    is_pretrain = recipe.__name__.endswith("_pretrain_config")
    peft = None if peft in (None, "none") else peft
    if is_pretrain and peft is not None:
        raise UserInputError(
            f"--peft {peft}: LoRA/DoRA needs a finetune recipe, {recipe.__name__} is a "
            f"pretrain recipe (use {recipe.__name__.replace('_pretrain_', '_finetune_')})"
        )
    cfg = recipe() if is_pretrain else recipe(pretrained_checkpoint=pretrained_checkpoint, peft=peft)
    if is_pretrain and pretrained_checkpoint:
        cfg.checkpoint.pretrained_checkpoint = pretrained_checkpoint  # continued pretraining
    apply_overrides(cfg, overrides)
    if device:
        cfg.train.device = device
    if cfg.peft is not None and is_pretrain:
        raise UserInputError(f"peft: {recipe.__name__} is a pretrain recipe; LoRA/DoRA needs a finetune recipe")
    return cfg


def config_from_args(args: argparse.Namespace) -> ConfigContainer:
    """`build_run_config` from the parsed `run` arguments."""
    return build_run_config(
        args.recipe,
        pretrained_checkpoint=args.pretrained_checkpoint,
        peft=args.peft,
        device=args.device,
        overrides=args.overrides,
    )


def world_size_from_env() -> int:
    """WORLD_SIZE as torchrun sets it (1 when unset)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise UserInputError(f"WORLD_SIZE={shown(raw)}: expected a positive integer")
    return int(raw)


class _RaisingParser(argparse.ArgumentParser):
    """argparse that raises UserInputError instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UserInputError(f"gemma3-runtime run: {message}")


def validate_run_argv(argv: Sequence[str], *, world_size: int) -> ConfigContainer:
    """Parse the arguments of `gemma3-runtime run` (without `run`), build and validate the config for
    `world_size` processes, as the job would before it reads any file. Raises UserInputError."""
    parser = _RaisingParser(prog="gemma3-runtime run", add_help=False)
    add_run_arguments(parser)
    cfg = config_from_args(parser.parse_args(list(argv)))
    validate(cfg, world_size=world_size)
    return cfg

"""`gemma3-runtime run --recipe NAME [--pretrained-checkpoint P] [--peft lora|dora] [--device D] [KEY=VALUE ...]`

Single process, or under `torchrun --nproc-per-node N -m gemma3_runtime.cli.main run ...` (gloo on CPU, NCCL on
CUDA). Overrides are dotted config keys with YAML values (`train.global_batch_size=64 checkpoint.save=/ckpt`).
Environment: SAVE_DIR (default parent of the save dir: $SAVE_DIR/<run name>), HF_TOKEN / HF_HOME (tokenizer and
hub access, read by transformers), WANDB_API_KEY (W&B logging when set and wandb is installed).
Exit codes: 0 done; 2 bad input (one line); REQUEUE_EXIT_CODE (199) checkpoint committed after SIGTERM/SIGUSR2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "run",
        help="train: pretrain, full finetune, LoRA/DoRA (a recipe + key=value overrides)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        choices=["lora", "dora", "none"],
        default=None,
        help="parameter-efficient finetuning (finetune recipes only)",
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available (logged either way)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the resolved run_config.yaml and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    return parser


def build_config(args: argparse.Namespace):
    """Recipe + flags + overrides -> ConfigContainer (torch-free; every error is a UserInputError)."""
    from gemma3_runtime.errors import UserInputError
    from gemma3_runtime.training.config import apply_overrides
    from gemma3_runtime.training.recipes import get_recipe

    recipe = get_recipe(args.recipe)
    is_pretrain = recipe.__name__.endswith("_pretrain_config")
    peft = None if args.peft in (None, "none") else args.peft
    kwargs = {}
    if is_pretrain:
        if peft is not None:
            raise UserInputError(
                f"--peft {peft}: LoRA/DoRA needs a finetune recipe, {recipe.__name__} is a "
                f"pretrain recipe (use {recipe.__name__.replace('_pretrain_', '_finetune_')})"
            )
    else:
        kwargs["pretrained_checkpoint"] = args.pretrained_checkpoint
        kwargs["peft"] = peft
    cfg = recipe(**kwargs)
    if is_pretrain and args.pretrained_checkpoint:
        cfg.checkpoint.pretrained_checkpoint = args.pretrained_checkpoint  # continued pretraining
    bad = [o for o in args.overrides if "=" not in o or o.startswith("-")]
    if bad:
        raise UserInputError(
            f"argument {bad[0]!r}: expected KEY=VALUE (a dotted config key), e.g. train.train_iters=10"
        )
    apply_overrides(cfg, args.overrides)
    if args.device:
        cfg.train.device = args.device
    if cfg.peft is not None and is_pretrain:
        raise UserInputError(f"peft: {recipe.__name__} is a pretrain recipe; LoRA/DoRA needs a finetune recipe")
    return cfg


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    import warnings

    warnings.filterwarnings("ignore", module="megatron")
    # megatron DDP lists every parameter of every bucket at INFO
    logging.getLogger("megatron.core.distributed").setLevel(logging.WARNING)


def main(args: argparse.Namespace) -> int:
    from gemma3_launch.contract import REQUEUE_EXIT_CODE

    cfg = build_config(args)
    if args.dry_run:
        print(cfg.to_yaml(), end="")
        return 0
    _setup_logging()
    from gemma3_runtime.training.trainer import train

    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        _print_summary(result)
    return REQUEUE_EXIT_CODE if result.status == "preempted" else 0


def _print_summary(result) -> None:
    lines = [f"run {result.status} at iteration {result.iteration} in {result.seconds:.0f} s"]
    if result.train_losses:
        lines.append(f"train loss: first {result.train_losses[0][1]:.4f} -> last {result.train_losses[-1][1]:.4f}")
    if len(result.eval_losses) >= 1:
        first, last = result.eval_losses[0], result.eval_losses[-1]
        drop = (1 - last[1] / first[1]) * 100 if first[1] else 0.0
        lines.append(
            f"held-out loss: {first[1]:.4f} (iteration {first[0]}) -> {last[1]:.4f} (iteration {last[0]}), "
            f"{drop:.1f}% lower"
        )
    if result.task_accuracies:
        first, last = result.task_accuracies[0], result.task_accuracies[-1]
        lines.append(f"task accuracy: {first[1]:.1%} (iteration {first[0]}) -> {last[1]:.1%} (iteration {last[0]})")
    if result.checkpoint:
        lines.append(f"checkpoint: {result.checkpoint}")
    print("\n".join(["== summary =="] + lines), flush=True)

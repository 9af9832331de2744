"""`gemma3-runtime run --recipe NAME [--pretrained-checkpoint P] [--peft lora|dora] [--device D] [KEY=VALUE ...]`

Single process, or under `torchrun --nproc-per-node N -m gemma3_runtime.cli.main run ...` (gloo on CPU, NCCL on
CUDA). Overrides are dotted config keys with YAML values (`train.global_batch_size=64 checkpoint.save=/ckpt`); a
value replaces the field's value. `--dry-run [--world-size N]` runs every config check that reads no file (the same
`validate()` the job and `gemma3-launch validate` run) and prints the resolved run_config.yaml.
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
    from gemma3_runtime.training.run_args import add_run_arguments

    add_run_arguments(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config (every check that reads no file) and print the resolved run_config.yaml",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="with --dry-run: check against this many processes (default: $WORLD_SIZE, else 1)",
    )
    return parser


def build_config(args: argparse.Namespace):
    """Recipe + flags + overrides -> a validated ConfigContainer (torch-free; every error is a UserInputError)."""
    from gemma3_runtime.errors import UserInputError
    from gemma3_runtime.training.run_args import config_from_args, world_size_from_env
    from gemma3_runtime.training.validate import validate

    if args.world_size is not None and not args.dry_run:
        raise UserInputError("--world-size: only with --dry-run (a real run takes it from torchrun's WORLD_SIZE)")
    cfg = config_from_args(args)
    validate(cfg, world_size=args.world_size if args.world_size is not None else world_size_from_env())
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
    from gemma3_runtime.cli import result as step_result

    step_result.add_summary(lines)
    print("\n".join(["== summary =="] + lines), flush=True)

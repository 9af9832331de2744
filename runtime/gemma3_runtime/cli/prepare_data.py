"""`gemma3-runtime prepare-data`: JSONL text -> Megatron indexed dataset (.bin/.idx) with the model's tokenizer."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prepare-data", help="tokenize JSONL text into a Megatron indexed dataset (<prefix>.bin/.idx)"
    )
    parser.add_argument("--input", required=True, help="JSONL file, one document per line")
    parser.add_argument("--output-prefix", required=True, help="writes PREFIX.bin and PREFIX.idx")
    parser.add_argument(
        "--tokenizer", required=True, help="HF tokenizer directory (an HF model dir or a checkpoint's iter_*/tokenizer)"
    )
    parser.add_argument("--text-key", default="text", help="JSON field holding the text (default: text)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(args: argparse.Namespace) -> int:
    from gemma3_runtime.data.builder import load_tokenizer
    from gemma3_runtime.data.indexed import write_indexed_dataset

    tokenizer = load_tokenizer(args.tokenizer, "--tokenizer")
    documents, tokens = write_indexed_dataset(
        args.input, args.output_prefix, tokenizer, args.text_key, show_progress=not args.no_progress
    )
    print(
        f"wrote {args.output_prefix}.bin/.idx: {documents} documents, {tokens} tokens "
        f"(use data.kind=indexed data.data_paths=[{args.output_prefix}])"
    )
    return 0

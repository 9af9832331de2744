"""`gemma3-runtime prepare-data`: text documents -> Megatron indexed dataset (.bin/.idx) with the model's tokenizer.

The input is any source a run's data.data_paths takes (data/hf_datasets.py): a JSONL file (read line by line, a
bad line named by number), Parquet / Arrow files and directories, or an `hf:OWNER/NAME` hub dataset.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prepare-data", help="tokenize text documents into a Megatron indexed dataset (<prefix>.bin/.idx)"
    )
    parser.add_argument(
        "--input",
        required=True,
        help="JSONL file (one document per line), Parquet/Arrow file or directory, or hf:OWNER/NAME (a hub dataset "
        "through the HF_HOME cache; set HF_HUB_OFFLINE=1 without network)",
    )
    parser.add_argument("--output-prefix", required=True, help="writes PREFIX.bin and PREFIX.idx")
    parser.add_argument(
        "--tokenizer", required=True, help="HF tokenizer directory (an HF model dir or a checkpoint's iter_*/tokenizer)"
    )
    parser.add_argument("--text-key", default="text", help="field / column holding the text (default: text)")
    parser.add_argument("--split", default="train", help="split of a hub dataset or save_to_disk directory")
    parser.add_argument("--subset", default=None, help="configuration (subset) of a hub dataset")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(args: argparse.Namespace) -> int:
    from gemma3_runtime.data import hf_datasets
    from gemma3_runtime.data.builder import load_tokenizer
    from gemma3_runtime.data.indexed import check_output_prefix, write_indexed_dataset, write_indexed_documents

    tokenizer = load_tokenizer(args.tokenizer, "--tokenizer")
    if hf_datasets.is_hf_source(args.input):
        source = hf_datasets.resolve_source(args.input, "--input")
        check_output_prefix(args.output_prefix, "--output-prefix")
        texts, count = hf_datasets.texts(source, args.split, args.subset, args.text_key, "--input")
        with _progress(count, not args.no_progress) as bar:
            documents, tokens = write_indexed_documents(_counted(texts, bar), args.output_prefix, tokenizer, args.input)
    else:
        documents, tokens = write_indexed_dataset(
            args.input, args.output_prefix, tokenizer, args.text_key, show_progress=not args.no_progress
        )
    print(
        f"wrote {args.output_prefix}.bin/.idx: {documents} documents, {tokens} tokens "
        f"(use data.kind=indexed data.data_paths=[{args.output_prefix}])"
    )
    return 0


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="doc", desc="tokenizing", disable=not enabled)


def _counted(texts, bar):
    for text in texts:
        bar.update(1)
        yield text

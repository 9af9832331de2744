"""Generation speed of OUR engine (static ring KV cache, compiled + CUDA-graph decode step) against transformers'
`generate` on the SAME weights, in the same process. A benchmark, not a test: prints numbers, never fails on speed.

Measured per configuration, greedy, no early stop:
  decode tokens/s  = (N - 1) new tokens after the first / the time they took (batch 1), or the aggregate
                     batch x (N - 1) / that time (the batch-16 configurations);
  TTFT             = ids in hand -> first new token on the host (prefill + first selection), for two prompt lengths
                     (batch 1 only);
  =HF toks         = leading greedy tokens identical to transformers', the MINIMUM over --check-prompts different
                     prompts (batch 1: against HF with its dynamic cache, each prompt generated alone; batch 16: row by
                     row against HF static cache + compile at batch 16 - batched bf16 GEMMs round differently from
                     batch 1's, so a batch is compared with a batch).
Ours reports its own timings (GenerationOutput); transformers' are wall times of `generate` with 1 and N new tokens
(decode = (N - 1) / (T_N - T_1)). Every configuration is warmed up first (compilation / graph capture excluded and
reported separately as `setup_s`), then the median of --repeats runs is kept.

CPU (default without CUDA): the real Gemma 3 270M, fp32.
    python bench/generate.py --json /tmp/generate_cpu.json
GPU: the Gemma 3 1B architecture, random init, bf16, 128-token prompt, 256 new tokens, TTFT also at 1,024 tokens;
transformers with its dynamic cache and with a static cache + torch.compile(mode="reduce-overhead"); 5 prompts checked
at batch 1; ours and HF static + compile also at batch 16 (16 different prompts, aggregate tokens/s).
    python bench/generate.py --device cuda --json $OUT/generate_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform as pyplatform
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for sub in ("runtime", "launcher"):
    if str(REPO / sub) not in sys.path:
        sys.path.insert(0, str(REPO / sub))

import torch  # noqa: E402
from generate_measure import (  # noqa: E402
    Workload,
    guarded,
    leading_agreement,
    measure_hf,
    measure_hf_batch,
    measure_ours,
    measure_ours_batch,
    merge_rounds,
)


def prompt_ids(tokenizer: Any, length: int, vocab: int, variant: int = 0) -> list[int]:
    """BOS + real English text when a tokenizer is available (CPU, 270M), else deterministic ids (random model).
    `variant` picks a different prompt of the same length (another stretch of the text / another seed)."""
    if tokenizer is not None:
        from pydoc_data.topics import topics

        text = "\n\n".join(topics[k] for k in sorted(topics))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        first = variant * (length - 1)
        return [tokenizer.bos_token_id] + ids[first : first + length - 1]
    gen = torch.Generator().manual_seed(length + 1_000_003 * variant)
    return [2] + torch.randint(1000, vocab - 1000, (length - 1,), generator=gen).tolist()


def prompt_set(tokenizer: Any, length: int, vocab: int, count: int) -> list[list[int]]:
    """`count` different prompts of `length` tokens; the first is `prompt_ids(..., variant=0)`."""
    return [prompt_ids(tokenizer, length, vocab, variant) for variant in range(count)]


# ---- models -------------------------------------------------------------------------------------------------------
def build_models(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """(HF model, our megatron model, tokenizer or None, description) with identical weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gemma3_runtime.generate.loading import build_model, resolve_sources

    if args.model == "270m":
        from gemma3_runtime.assets import gemma3_270m_hf_dir

        hf_dir = gemma3_270m_hf_dir()
        tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
        description = "Gemma 3 270M (real weights)"
    else:
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        from gemma3_runtime.model.config import Gemma3Config

        cfg = Gemma3Config.preset(args.model).to_hf()
        hf_cfg = Gemma3TextConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
        torch.manual_seed(0)
        with torch.device(device):
            random_model = Gemma3ForCausalLM(hf_cfg).to(dtype)
        hf_dir = Path(tempfile.mkdtemp(prefix="gen-bench-")) / "hf"
        random_model.save_pretrained(str(hf_dir))
        del random_model
        tokenizer = None
        description = f"Gemma 3 {args.model.upper()} architecture (random init)"
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype).to(device).eval()
    sources_dir = str(hf_dir)
    if tokenizer is None:  # random model: no tokenizer files; the bridge only needs config + weights
        from gemma3_runtime.bridge.auto_bridge import AutoBridge

        bridge = AutoBridge.from_hf_pretrained(sources_dir)
        provider = bridge.to_megatron_provider(load_weights=True).replace(
            params_dtype=dtype, device=device.type, tensor_model_parallel_size=1, pipeline_model_parallel_size=1
        )
        provider.finalize()
        ours = provider.provide_distributed_model(wrap_with_ddp=False)[0].eval()
    else:
        ours = build_model(resolve_sources(sources_dir, None), device, str(dtype).removeprefix("torch."))
    return hf, ours, tokenizer, description


# ---- main -----------------------------------------------------------------------------------------------------------
Measure = Callable[[], dict[str, Any]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if cuda else "cpu")
    parser.add_argument(
        "--model", choices=["270m", "1b", "4b"], default=None, help="default: 270m (real) on CPU, 1b (random) on CUDA"
    )
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default=None, help="default: float32 on CPU, bfloat16 on CUDA"
    )
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=None, help="default: 256 on CUDA, 32 on CPU")
    parser.add_argument("--ttft-prompt-len", type=int, default=None, help="default: 1024 on CUDA, 512 on CPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--check-prompts",
        type=int,
        default=None,
        help="different prompts whose greedy tokens are compared with HF's at batch 1 (default: 5 on CUDA, 1 on CPU)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="also measure ours and HF (CUDA: static cache + compile; CPU: dynamic cache) at this batch, aggregate "
        "tokens/s (default: 16 on CUDA, off on CPU; 0: off)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure all configurations this many times in alternation and report the medians (a shared CPU's load "
        "drifts over minutes: alternating exposes every configuration to it alike)",
    )
    parser.add_argument("--skip", default="", help="'|'-separated configuration names to skip (names contain commas)")
    parser.add_argument("--json", default=None, help="write all results here")
    args = parser.parse_args(argv)
    on_gpu = args.device == "cuda"
    args.model = args.model or ("1b" if on_gpu else "270m")
    args.dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    args.new_tokens = args.new_tokens or (256 if on_gpu else 32)
    args.ttft_prompt_len = args.ttft_prompt_len or (1024 if on_gpu else 512)
    args.check_prompts = args.check_prompts or (5 if on_gpu else 1)
    args.batch_size = (16 if on_gpu else 0) if args.batch_size is None else args.batch_size
    args.error = parser.error
    return args


def workload(args: argparse.Namespace, tokenizer: Any, vocab: int) -> Workload:
    ids, *check_ids = prompt_set(tokenizer, args.prompt_len, vocab, args.check_prompts)
    batch = prompt_set(tokenizer, args.prompt_len, vocab, args.batch_size) if args.batch_size > 1 else []
    ttft_ids = prompt_ids(tokenizer, args.ttft_prompt_len, vocab)
    return Workload(ids, check_ids, ttft_ids, batch, args.new_tokens, args.repeats)


def batch_pair(ours, work: Workload, ours_how: str, hf_how: str, hf_measure: Measure) -> list[tuple[str, Measure]]:
    """Ours and HF on the same batch of prompts (none without one)."""
    if not work.batch:
        return []
    size = len(work.batch)
    return [
        (
            f"ours: {ours_how}, batch {size}",
            lambda: measure_ours_batch(ours, work),
        ),
        (f"HF generate, {hf_how}, batch {size}", hf_measure),
    ]


def hf_static_compiled(hf, measure: Measure) -> Measure:
    """transformers >= 4.48 compiles the decoding forward itself (CompileConfig, "reduce-overhead" = its own CUDA
    graphs) when generate runs with a static cache on CUDA: wrapping forward again would compile twice."""

    def run() -> dict[str, Any]:
        hf.generation_config.cache_implementation = "static"
        try:
            return measure()
        finally:
            hf.generation_config.cache_implementation = None

    return run


def gpu_configurations(hf, ours, work: Workload, device: torch.device) -> list[tuple[str, Measure]]:
    def ours_at(graphs: bool, compiled: bool, tune: bool = False, check: bool = False) -> Measure:
        return lambda: measure_ours(ours, work, device, graphs, compiled, tune, check=check)

    def hf_at(**kwargs: Any) -> Measure:
        return lambda: measure_hf(hf, work, device, **kwargs)

    hf_batch = hf_static_compiled(hf, lambda: measure_hf_batch(hf, work, device, disable_compile=False))
    return [
        ("ours: compiled step + CUDA graph", ours_at(True, True, check=True)),
        ("ours: same, --tune-kernels", ours_at(True, True, tune=True)),
        ("ours: eager step + CUDA graph", ours_at(True, False)),
        ("ours: eager, no graph", ours_at(False, False)),
        ("HF generate, dynamic cache", hf_at()),
        ("HF generate, static cache + torch.compile", hf_static_compiled(hf, hf_at(disable_compile=False))),
        *batch_pair(ours, work, "compiled step + CUDA graph", "static cache + torch.compile", hf_batch),
    ]


def cpu_configurations(hf, ours, work: Workload, device: torch.device) -> list[tuple[str, Measure]]:
    return [
        ("ours: eager", lambda: measure_ours(ours, work, device, False, False, check=True)),
        ("HF generate, dynamic cache", lambda: measure_hf(hf, work, device)),
        *batch_pair(ours, work, "eager", "dynamic cache", lambda: measure_hf_batch(hf, work, device)),
    ]


def compare_tokens_with_hf(results: list[dict[str, Any]]) -> None:
    """Batch 1: against HF's first configuration (dynamic cache); a batch: HF's configuration at the same batch.
    Replaces each result's tokens by how many leading ones agree (the worst prompt or row)."""
    for r in results:
        batch = r.get("batch", 1)
        reference = next(
            (
                h["tokens"]
                for h in results
                if h["name"].startswith("HF") and "tokens" in h and h.get("batch", 1) == batch
            ),
            None,
        )
        if reference is not None and "tokens" in r:
            agree = leading_agreement(r["tokens"], reference)
            r["greedy_tokens_equal_to_hf_per_prompt"] = agree
            r["greedy_tokens_equal_to_hf"] = min(agree)
    for r in results:
        r.pop("tokens", None)


def print_table(results: list[dict[str, Any]], header_line: str, ttft_len: int) -> None:
    print("\n" + header_line)
    header = (
        f"{'configuration':44s} {'decode tok/s':>12s} {'TTFT ms':>9s} {f'TTFT@{ttft_len} ms':>13s} "
        f"{'setup s':>8s} {'=HF toks':>8s}"
    )
    print(header + "\n" + "-" * len(header))
    for r in results:
        if "error" in r:
            print(f"{r['name']:44s} ERROR {r['error'][:120]}")
            continue
        ttft_long = "-" if r["ttft_long_s"] is None else f"{1e3 * r['ttft_long_s']:.1f}"
        print(
            f"{r['name']:44s} {r['decode_tok_s']:12.1f} {1e3 * r['ttft_s']:9.1f} {ttft_long:>13s} "
            f"{r['setup_s']:8.1f} {r.get('greedy_tokens_equal_to_hf', '-'):>8}"
        )


def print_ratios(results: list[dict[str, Any]], batch_size: int) -> None:
    """Ours against HF static + compile (batch 1 and the batch), and per round against HF's dynamic cache."""
    by_name = {r["name"]: r for r in results if "error" not in r}
    for suffix in ["", f", batch {batch_size}"] if batch_size > 1 else [""]:
        mine = by_name.get(f"ours: compiled step + CUDA graph{suffix}")
        theirs = by_name.get(f"HF generate, static cache + torch.compile{suffix}")
        if mine and theirs:
            ratio = mine["decode_tok_s"] / theirs["decode_tok_s"]
            mine["decode_vs_hf_static_compile"] = ratio
            print(f"ours / HF static cache + compile, decode{suffix or ', batch 1'}: {ratio:.2f}x")
    hf_dynamic = next((r for r in results if r["name"] == "HF generate, dynamic cache" and "rounds" in r), None)
    for r in results:
        if hf_dynamic is None or "rounds" not in r or r is hf_dynamic:
            continue
        ratios = [
            a / b for a, b in zip(r["rounds"]["decode_tok_s"], hf_dynamic["rounds"]["decode_tok_s"], strict=False)
        ]
        ttft = [b / a for a, b in zip(r["rounds"]["ttft_s"], hf_dynamic["rounds"]["ttft_s"], strict=False)]
        r["decode_vs_hf_per_round"], r["ttft_speed_vs_hf_per_round"] = ratios, ttft
        print(
            f"{r['name']}: decode speed / HF's per round {[round(x, 3) for x in ratios]} "
            f"(median {statistics.median(ratios):.3f}); TTFT speed / HF's {[round(x, 3) for x in ttft]} "
            f"(median {statistics.median(ttft):.3f})"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    on_gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if on_gpu:
        from gemma3_runtime import platform

        platform.select_device("cuda")

    hf, ours, tokenizer, description = build_models(args, device, dtype)
    work = workload(args, tokenizer, hf.config.vocab_size)
    configs = (gpu_configurations if on_gpu else cpu_configurations)(hf, ours, work, device)
    skip = set(filter(None, (name.strip() for name in args.skip.split("|"))))
    unknown = skip - {name for name, _ in configs}
    if unknown:
        args.error(f"--skip: unknown configuration(s) {sorted(unknown)}; known: {[name for name, _ in configs]}")
    chosen = [(name, fn) for name, fn in configs if name not in skip]
    per_round = [[guarded(name, fn) for name, fn in chosen] for _ in range(args.rounds)]
    results = [merge_rounds([round_[i] for round_ in per_round]) for i in range(len(chosen))]
    compare_tokens_with_hf(results)

    card = torch.cuda.get_device_name(device) if on_gpu else pyplatform.processor() or pyplatform.machine()
    meta = {
        "device": card,
        "device_type": device.type,
        "model": description,
        "dtype": str(dtype),
        "batch": 1,
        "batch_configurations": len(work.batch),
        "check_prompts": args.check_prompts,
        "prompt_len": len(work.ids),
        "new_tokens": work.new_tokens,
        "ttft_long_prompt_len": len(work.ttft_ids),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "rounds": args.rounds,
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    print_table(
        results,
        f"{description}, {dtype}, batch 1 (and {len(work.batch) or '-'} where named), prompt {len(work.ids)}, "
        f"{work.new_tokens} new tokens, on {card}; =HF toks: the worst of {args.check_prompts} prompt(s) at batch 1, "
        "of the rows at a batch",
        len(work.ttft_ids),
    )
    print_ratios(results, len(work.batch))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

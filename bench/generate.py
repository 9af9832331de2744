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
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for sub in ("runtime", "launcher"):
    if str(REPO / sub) not in sys.path:
        sys.path.insert(0, str(REPO / sub))

import torch  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


# ---- measurements -------------------------------------------------------------------------------------------------
def measure_ours(
    model,
    ids: list[int],
    ttft_ids: list[int],
    new_tokens: int,
    repeats: int,
    device: torch.device,
    cuda_graphs: bool,
    compile_step: bool,
    tune_kernels: bool = False,
    check_ids: list[list[int]] = (),
) -> dict[str, Any]:
    """check_ids: further prompts of ids' length, each generated alone for the token check (same session shape)."""
    from gemma3_runtime.generate.api import decoder_for
    from gemma3_runtime.generate.engine import Engine

    engine = Engine(decoder_for(model), cuda_graphs=cuda_graphs, compile_step=compile_step, tune_kernels=tune_kernels)
    t0 = time.perf_counter()
    first = engine.generate([ids], new_tokens)  # session: cache, compile, capture
    setup_s = time.perf_counter() - t0
    checked = [first.tokens[0]] + [engine.generate([other], new_tokens).tokens[0] for other in check_ids]
    runs = [engine.generate([ids], new_tokens) for _ in range(repeats)]
    decode = [r.decode_steps / r.decode_s for r in runs]
    ttft = [r.time_to_first_token_s for r in runs]
    engine.generate([ttft_ids], 1)  # warm the long-prompt shape
    ttft_long = [engine.generate([ttft_ids], 1).time_to_first_token_s for _ in range(repeats)]
    return {
        "decode_tok_s": statistics.median(decode),
        "ttft_s": statistics.median(ttft),
        "ttft_long_s": statistics.median(ttft_long),
        "setup_s": setup_s,
        "tokens": checked,
        # from the decoding runs themselves: the long-prompt TTFT calls above (1 new token) replace the session
        # with a prefill-only one, which is why reading engine._session here used to report compiled=false
        **{k: bool(v) for k, v in runs[-1].decode_path.items()},
    }


def hf_generate(model, ids: list[int], new_tokens: int, device: torch.device, **kwargs) -> tuple[float, list[int]]:
    seconds, rows = hf_generate_batch(model, [ids], new_tokens, device, **kwargs)
    return seconds, rows[0]


def hf_generate_batch(
    model, prompts: list[list[int]], new_tokens: int, device: torch.device, **kwargs
) -> tuple[float, list[list[int]]]:
    """Equal-length prompts (no padding) -> (wall seconds, new tokens per row)."""
    x = torch.tensor(prompts, device=device)
    mask = torch.ones_like(x)
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            x,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            top_k=None,
            top_p=None,
            eos_token_id=None,
            pad_token_id=0,
            **kwargs,
        )
    sync(device)
    return time.perf_counter() - t0, out[:, x.size(1) :].tolist()


def measure_hf(
    model,
    ids: list[int],
    ttft_ids: list[int],
    new_tokens: int,
    repeats: int,
    device: torch.device,
    check_ids: list[list[int]] = (),
    **kwargs,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    _, tokens = hf_generate(model, ids, new_tokens, device, **kwargs)
    hf_generate(model, ids, 1, device, **kwargs)
    setup_s = time.perf_counter() - t0
    checked = [tokens] + [hf_generate(model, other, new_tokens, device, **kwargs)[1] for other in check_ids]
    full = [hf_generate(model, ids, new_tokens, device, **kwargs)[0] for _ in range(repeats)]
    one = [hf_generate(model, ids, 1, device, **kwargs)[0] for _ in range(repeats)]
    hf_generate(model, ttft_ids, 1, device, **kwargs)  # warm (static cache + compile: new shapes)
    one_long = [hf_generate(model, ttft_ids, 1, device, **kwargs)[0] for _ in range(repeats)]
    t_full, t_one = statistics.median(full), statistics.median(one)
    return {
        "decode_tok_s": (new_tokens - 1) / max(t_full - t_one, 1e-9),
        "ttft_s": t_one,
        "ttft_long_s": statistics.median(one_long),
        "setup_s": setup_s,
        "tokens": checked,
    }


def measure_ours_batch(
    model, prompts: list[list[int]], new_tokens: int, repeats: int, tune_kernels: bool = False
) -> dict[str, Any]:
    """The engine's default path on a batch of equal-length prompts: aggregate decode tokens/s."""
    from gemma3_runtime.generate.api import decoder_for
    from gemma3_runtime.generate.engine import Engine

    engine = Engine(decoder_for(model), tune_kernels=tune_kernels)  # CUDA: compiled + graph; CPU: eager
    t0 = time.perf_counter()
    first = engine.generate(prompts, new_tokens)
    setup_s = time.perf_counter() - t0
    runs = [engine.generate(prompts, new_tokens) for _ in range(repeats)]
    return {
        "batch": len(prompts),
        "decode_tok_s": statistics.median(len(prompts) * r.decode_steps / r.decode_s for r in runs),
        "ttft_s": statistics.median(r.time_to_first_token_s for r in runs),
        "ttft_long_s": None,
        "setup_s": setup_s,
        "tokens": first.tokens,
        **{k: bool(v) for k, v in runs[-1].decode_path.items()},
    }


def measure_hf_batch(model, prompts: list[list[int]], new_tokens: int, repeats: int, device: torch.device, **kwargs):
    """transformers `generate` on the batch: aggregate decode tokens/s = batch x (N - 1) / (T_N - T_1)."""
    t0 = time.perf_counter()
    _, tokens = hf_generate_batch(model, prompts, new_tokens, device, **kwargs)
    hf_generate_batch(model, prompts, 1, device, **kwargs)
    setup_s = time.perf_counter() - t0
    t_full = statistics.median(
        hf_generate_batch(model, prompts, new_tokens, device, **kwargs)[0] for _ in range(repeats)
    )
    t_one = statistics.median(hf_generate_batch(model, prompts, 1, device, **kwargs)[0] for _ in range(repeats))
    return {
        "batch": len(prompts),
        "decode_tok_s": len(prompts) * (new_tokens - 1) / max(t_full - t_one, 1e-9),
        "ttft_s": t_one,
        "ttft_long_s": None,
        "setup_s": setup_s,
        "tokens": tokens,
    }


def leading_agreement(rows: list[list[int]], reference: list[list[int]]) -> list[int]:
    """Per row: how many leading tokens equal the reference row's."""
    return [
        next((i for i, (a, b) in enumerate(zip(row, ref, strict=False)) if a != b), min(len(row), len(ref)))
        for row, ref in zip(rows, reference, strict=True)
    ]


def guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    print(f"... {name}", file=sys.stderr, flush=True)
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - a benchmark reports a failed configuration and goes on
        traceback.print_exc()
        return {"name": name, "error": f"{type(exc).__name__}: {exc}"[:500]}
    result["name"] = name
    return result


def merge_rounds(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's records from several rounds -> the first, with each timing replaced by its median over
    the rounds and the per-round values kept (`rounds`). A round that failed fails the configuration."""
    failed = next((r for r in records if "error" in r), None)
    if failed is not None or len(records) == 1:
        return failed or records[0]
    merged = dict(records[0])
    timed = [key for key in ("decode_tok_s", "ttft_s", "ttft_long_s", "setup_s") if merged.get(key) is not None]
    for key in timed:
        merged[key] = statistics.median(r[key] for r in records)
    merged["rounds"] = {
        key: [r[key] for r in records] for key in ("decode_tok_s", "ttft_s", "ttft_long_s") if key in timed
    }
    return merged


# ---- main -----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if cuda else "cpu")
    parser.add_argument(
        "--model",
        choices=["270m", "1b", "4b"],
        default=None,
        help="default: 270m (real) on CPU, 1b (random init) on CUDA",
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
        help="measure all configurations this many times in alternation and report the medians "
        "(a shared CPU's load drifts over minutes: alternating exposes every configuration to "
        "it alike)",
    )
    parser.add_argument("--skip", default="", help="'|'-separated configuration names to skip (names contain commas)")
    parser.add_argument("--json", default=None, help="write all results here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    args.model = args.model or ("1b" if on_gpu else "270m")
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_gpu else "float32"))
    new_tokens = args.new_tokens or (256 if on_gpu else 32)
    ttft_len = args.ttft_prompt_len or (1024 if on_gpu else 512)
    if args.threads:
        torch.set_num_threads(args.threads)
    if on_gpu:
        from gemma3_runtime import platform

        platform.select_device("cuda")

    hf, ours, tokenizer, description = build_models(args, device, dtype)
    vocab = hf.config.vocab_size
    check_count = args.check_prompts or (5 if on_gpu else 1)
    ids, *check_ids = prompt_set(tokenizer, args.prompt_len, vocab, check_count)
    ttft_ids = prompt_ids(tokenizer, ttft_len, vocab)
    batch_size = (16 if on_gpu else 0) if args.batch_size is None else args.batch_size
    batch_prompts = prompt_set(tokenizer, args.prompt_len, vocab, batch_size) if batch_size > 1 else []
    skip = set(filter(None, (name.strip() for name in args.skip.split("|"))))
    configs: list[tuple[str, Callable[[], dict[str, Any]]]] = []

    def batch_pair(ours_how: str, hf_how: str, hf_measure: Callable[[], dict[str, Any]]) -> list:
        """Ours and HF on the same batch of prompts (none without one)."""
        if not batch_prompts:
            return []
        size = len(batch_prompts)
        return [
            (
                f"ours: {ours_how}, batch {size}",
                lambda: measure_ours_batch(ours, batch_prompts, new_tokens, args.repeats),
            ),
            (f"HF generate, {hf_how}, batch {size}", hf_measure),
        ]

    if on_gpu:
        configs += [
            (
                "ours: compiled step + CUDA graph",
                lambda: measure_ours(
                    ours, ids, ttft_ids, new_tokens, args.repeats, device, True, True, check_ids=check_ids
                ),
            ),
            (
                "ours: same, --tune-kernels",
                lambda: measure_ours(ours, ids, ttft_ids, new_tokens, args.repeats, device, True, True, True),
            ),
            (
                "ours: eager step + CUDA graph",
                lambda: measure_ours(ours, ids, ttft_ids, new_tokens, args.repeats, device, True, False),
            ),
            (
                "ours: eager, no graph",
                lambda: measure_ours(ours, ids, ttft_ids, new_tokens, args.repeats, device, False, False),
            ),
            (
                "HF generate, dynamic cache",
                lambda: measure_hf(hf, ids, ttft_ids, new_tokens, args.repeats, device, check_ids=check_ids),
            ),
        ]

        def hf_static_compiled(measure: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
            # transformers >= 4.48 compiles the decoding forward itself (CompileConfig, "reduce-overhead" = its own
            # CUDA graphs) when generate runs with a static cache on CUDA: wrapping forward again would compile twice
            def run() -> dict[str, Any]:
                hf.generation_config.cache_implementation = "static"
                try:
                    return measure()
                finally:
                    hf.generation_config.cache_implementation = None

            return run

        configs.append(
            (
                "HF generate, static cache + torch.compile",
                hf_static_compiled(
                    lambda: measure_hf(
                        hf, ids, ttft_ids, new_tokens, args.repeats, device, check_ids=check_ids, disable_compile=False
                    )
                ),
            )
        )
        configs += batch_pair(
            "compiled step + CUDA graph",
            "static cache + torch.compile",
            hf_static_compiled(
                lambda: measure_hf_batch(hf, batch_prompts, new_tokens, args.repeats, device, disable_compile=False)
            ),
        )
    else:
        configs += [
            (
                "ours: eager",
                lambda: measure_ours(
                    ours, ids, ttft_ids, new_tokens, args.repeats, device, False, False, check_ids=check_ids
                ),
            ),
            (
                "HF generate, dynamic cache",
                lambda: measure_hf(hf, ids, ttft_ids, new_tokens, args.repeats, device, check_ids=check_ids),
            ),
        ]
        configs += batch_pair(
            "eager",
            "dynamic cache",
            lambda: measure_hf_batch(hf, batch_prompts, new_tokens, args.repeats, device),
        )
    unknown = skip - {name for name, _ in configs}
    if unknown:
        parser.error(f"--skip: unknown configuration(s) {sorted(unknown)}; known: {[name for name, _ in configs]}")
    chosen = [(name, fn) for name, fn in configs if name not in skip]
    per_round = [[guarded(name, fn) for name, fn in chosen] for _ in range(args.rounds)]
    results = [merge_rounds([round_[i] for round_ in per_round]) for i in range(len(chosen))]

    # batch 1: HF's first configuration (dynamic cache); a batch: HF's configuration at the same batch
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
            r["greedy_tokens_equal_to_hf"] = min(agree)  # the worst prompt's leading tokens identical to HF's
    for r in results:
        r.pop("tokens", None)

    card = torch.cuda.get_device_name(device) if on_gpu else pyplatform.processor() or pyplatform.machine()
    meta = {
        "device": card,
        "device_type": device.type,
        "model": description,
        "dtype": str(dtype),
        "batch": 1,
        "batch_configurations": len(batch_prompts),
        "check_prompts": check_count,
        "prompt_len": len(ids),
        "new_tokens": new_tokens,
        "ttft_long_prompt_len": len(ttft_ids),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "rounds": args.rounds,
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    print(
        f"\n{description}, {dtype}, batch 1 (and {len(batch_prompts) or '-'} where named), prompt {len(ids)}, "
        f"{new_tokens} new tokens, on {card}; =HF toks: the worst of {check_count} prompt(s) at batch 1, of the rows "
        "at a batch"
    )
    header = (
        f"{'configuration':44s} {'decode tok/s':>12s} {'TTFT ms':>9s} {f'TTFT@{len(ttft_ids)} ms':>13s} "
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
    by_name = {r["name"]: r for r in results if "error" not in r}
    for suffix in ["", *(f", batch {len(batch_prompts)}" for _ in batch_prompts[:1])]:
        mine = by_name.get(f"ours: compiled step + CUDA graph{suffix}")
        theirs = by_name.get(f"HF generate, static cache + torch.compile{suffix}")
        if mine and theirs:
            ratio = mine["decode_tok_s"] / theirs["decode_tok_s"]
            mine["decode_vs_hf_static_compile"] = ratio
            print(f"ours / HF static cache + compile, decode{suffix or ', batch 1'}: {ratio:.2f}x")
    hf_dynamic = next((r for r in results if r["name"] == "HF generate, dynamic cache" and "rounds" in r), None)
    for r in results:
        if hf_dynamic is not None and "rounds" in r and r is not hf_dynamic:
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
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The timed parts of bench/generate.py: our engine and transformers' `generate` on the same prompts, one
configuration per call, each returning its timings (medians of `repeats` runs after a warm-up) and its greedy tokens."""

from __future__ import annotations

import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Workload:
    """What every configuration runs: the timed prompt `ids`, the further prompts of its length whose greedy tokens
    are checked against HF (`check_ids`, each generated alone), the long prompt of the second TTFT, and the batch of
    equal-length prompts (empty: no batch configurations)."""

    ids: list[int]
    check_ids: list[list[int]]
    ttft_ids: list[int]
    batch: list[list[int]]
    new_tokens: int
    repeats: int


def measure_ours(
    model,
    work: Workload,
    device: torch.device,
    cuda_graphs: bool,
    compile_step: bool,
    tune_kernels: bool = False,
    check: bool = False,
) -> dict[str, Any]:
    """check: also generate `work.check_ids` (same session shape) for the token check."""
    from gemma3_runtime.generate.api import decoder_for
    from gemma3_runtime.generate.engine import Engine

    ids, ttft_ids, new_tokens, repeats = work.ids, work.ttft_ids, work.new_tokens, work.repeats
    check_ids = work.check_ids if check else []

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


def measure_hf(model, work: Workload, device: torch.device, check: bool = True, **kwargs) -> dict[str, Any]:
    """transformers `generate` at batch 1: decode tokens/s = (N - 1) / (T_N - T_1); TTFT = T_1."""
    ids, ttft_ids, new_tokens, repeats = work.ids, work.ttft_ids, work.new_tokens, work.repeats
    check_ids = work.check_ids if check else []
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


def measure_ours_batch(model, work: Workload, tune_kernels: bool = False) -> dict[str, Any]:
    """The engine's default path on the batch of equal-length prompts: aggregate decode tokens/s."""
    from gemma3_runtime.generate.api import decoder_for
    from gemma3_runtime.generate.engine import Engine

    prompts, new_tokens, repeats = work.batch, work.new_tokens, work.repeats

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


def measure_hf_batch(model, work: Workload, device: torch.device, **kwargs) -> dict[str, Any]:
    """transformers `generate` on the batch: aggregate decode tokens/s = batch x (N - 1) / (T_N - T_1)."""
    prompts, new_tokens, repeats = work.batch, work.new_tokens, work.repeats
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

"""Which changes speed up the captured decode step (issue 5)? Runs the 1B's graph-captured, compiled decode under
a few variants in one process and prints decode tokens/s for each, plus whether its greedy tokens equal the first
variant's. An exploration tool: variants are applied by patching, and a variant that pays moves into the runtime.

    python3 bench/gpu_session/decode_variants.py [--variants base,sdpa_attn,cdt] [--tokens 256] [--batch 1]

Variants:
  base            the runtime as it is (attention as matmul + masked fp32 softmax + matmul)
  sdpa_attn       the compiled step's attention through SDPA
  cdt             inductor coordinate-descent tuning of the generated kernels (what --tune-kernels switches on)
  autotune        torch.compile mode="max-autotune-no-cudagraphs" (Triton GEMM/GEMV candidates are benchmarked)
  chunked_argmax  the in-step greedy choice as two reductions over 1,024-wide vocabulary slices
                  (session.ARGMAX_SLICE_IN_STEP; the same index as argmax by construction)
  freezing        inductor freezing: weights become constants of the compiled step (constant folding, layouts)
  combo           inductor combo kernels: independent small kernels (q/k norms, cache writes) in one launch
  aggressive      inductor aggressive_fusion: fuse nodes even without shared reads (fewer, larger kernels)
Combine with '+', e.g. chunked_argmax+cdt. Tokens are compared with the first variant's (run `base` first; bench/
generate.py shows base equal to HF's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@contextlib.contextmanager
def variant(name: str):
    import torch._inductor.config as inductor_config

    from gemma3_runtime.generate import session as session_mod

    parts = set(name.split("+"))
    known = {"base", "sdpa_attn", "cdt", "autotune", "chunked_argmax", "freezing", "combo", "aggressive"}
    if parts - known:
        raise ValueError(f"unknown variant part(s) {sorted(parts - known)}; known: {sorted(known)}")
    saved_attention, saved_compile = session_mod.step_attention_matmul, session_mod.Session.__dict__["_compile"]
    saved_slice = session_mod.ARGMAX_SLICE_IN_STEP
    saved_inductor = {
        key: getattr(inductor_config, key)
        for key in ("coordinate_descent_tuning", "freezing", "combo_kernels", "aggressive_fusion")
    }
    if "sdpa_attn" in parts:
        session_mod.step_attention_matmul = session_mod.step_attention
    if "cdt" in parts:
        inductor_config.coordinate_descent_tuning = True
    if "freezing" in parts:
        inductor_config.freezing = True
    if "combo" in parts:
        inductor_config.combo_kernels = True
    if "aggressive" in parts:
        inductor_config.aggressive_fusion = True
    if "chunked_argmax" in parts:
        session_mod.ARGMAX_SLICE_IN_STEP = 1024
    if "autotune" in parts:
        session_mod.Session._compile = lambda self, fn: torch.compile(
            fn, dynamic=False, mode="max-autotune-no-cudagraphs"
        )
    try:
        yield
    finally:
        session_mod.step_attention_matmul, session_mod.Session._compile = saved_attention, saved_compile
        session_mod.ARGMAX_SLICE_IN_STEP = saved_slice
        for key, value in saved_inductor.items():
            setattr(inductor_config, key, value)
        torch._dynamo.reset()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="1b")
    ap.add_argument("--variants", default="base,sdpa_attn,cdt")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1, help="different equal-length prompts; tok/s is the aggregate")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from generate import build_models, prompt_set

    from gemma3_runtime.generate.api import decoder_for
    from gemma3_runtime.generate.engine import Engine

    device = torch.device("cuda")
    _hf, ours, tokenizer, description = build_models(argparse.Namespace(model=args.model), device, torch.bfloat16)
    del _hf
    torch.cuda.empty_cache()
    prompts = prompt_set(tokenizer, 128, 262144, args.batch)
    print(
        f"{torch.cuda.get_device_name()}: {description}, batch {args.batch}, 128-token prompts, "
        f"{args.tokens} new tokens"
    )
    results, reference = {}, None
    for name in args.variants.split(","):
        try:
            with variant(name):
                t0 = time.perf_counter()
                engine = Engine(decoder_for(ours), cuda_graphs=True, compile_step=True)
                first = engine.generate(prompts, args.tokens)
                setup = time.perf_counter() - t0
                runs = [engine.generate(prompts, args.tokens) for _ in range(args.repeats)]
                rate = statistics.median(args.batch * r.decode_steps / r.decode_s for r in runs)
                reference = reference or first.tokens
                # the worst row's count of leading tokens equal to the first variant's
                same = min(
                    next((i for i, (a, b) in enumerate(zip(row, ref, strict=False)) if a != b), len(ref))
                    for row, ref in zip(first.tokens, reference, strict=True)
                )
                results[name] = {
                    "decode_tok_s": rate,
                    "ms_per_token": 1000 / rate,
                    "setup_s": setup,
                    "tokens_equal_first_variant": same,
                    **runs[-1].decode_path,
                }
                print(
                    f"{name:<24} {rate:7.1f} tok/s  {1000 / rate:.3f} ms/token  setup {setup:5.1f} s  "
                    f"leading tokens equal to first variant {same}/{len(reference[0])}  path {runs[-1].decode_path}",
                    flush=True,
                )
                del engine
        except Exception as exc:  # noqa: BLE001 - report and go on with the next variant
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            print(f"{name:<24} FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"card": torch.cuda.get_device_name(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

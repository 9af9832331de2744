"""Which changes speed up the captured decode step (issue 5)? Runs the 1B's graph-captured, compiled decode under
a few variants in one process and prints decode tokens/s for each, plus whether its greedy tokens equal the first
variant's. An exploration tool: variants are applied by patching, and a variant that pays moves into the runtime.

    python3 bench/gpu_session/decode_variants.py [--variants base,math_attn,cdt] [--tokens 256]

Variants:
  base       the runtime as it is (attention as matmul + masked fp32 softmax + matmul)
  sdpa_attn  the compiled step's attention through SDPA
  cdt        inductor coordinate-descent tuning of the generated kernels (what --tune-kernels switches on)
  autotune   torch.compile mode="max-autotune-no-cudagraphs" (Triton GEMM/GEMV candidates are benchmarked)
Combine with '+', e.g. math_attn+cdt.
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

    from gemma3_runtime.generate import engine as engine_mod

    parts = set(name.split("+"))
    saved_attention, saved_compile = engine_mod.step_attention_matmul, engine_mod._Session.__dict__["_compile"]
    saved_cdt = inductor_config.coordinate_descent_tuning
    if "sdpa_attn" in parts:
        engine_mod.step_attention_matmul = engine_mod.step_attention
    if "cdt" in parts:
        inductor_config.coordinate_descent_tuning = True
    if "autotune" in parts:
        engine_mod._Session._compile = lambda self, fn: torch.compile(
            fn, dynamic=False, mode="max-autotune-no-cudagraphs"
        )
    try:
        yield
    finally:
        engine_mod.step_attention_matmul, engine_mod._Session._compile = saved_attention, saved_compile
        inductor_config.coordinate_descent_tuning = saved_cdt
        torch._dynamo.reset()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="1b")
    ap.add_argument("--variants", default="base,sdpa_attn,cdt")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from generate import build_models, prompt_ids

    from gemma3_runtime.generate.api import decoder_for
    from gemma3_runtime.generate.engine import Engine

    device = torch.device("cuda")
    _hf, ours, tokenizer, description = build_models(argparse.Namespace(model=args.model), device, torch.bfloat16)
    del _hf
    torch.cuda.empty_cache()
    ids = prompt_ids(tokenizer, 128, 262144)
    print(f"{torch.cuda.get_device_name()}: {description}, batch 1, 128-token prompt, {args.tokens} new tokens")
    results, reference = {}, None
    for name in args.variants.split(","):
        try:
            with variant(name):
                t0 = time.perf_counter()
                engine = Engine(decoder_for(ours), cuda_graphs=True, compile_step=True)
                first = engine.generate([ids], args.tokens)
                setup = time.perf_counter() - t0
                runs = [engine.generate([ids], args.tokens) for _ in range(args.repeats)]
                rate = statistics.median(r.decode_steps / r.decode_s for r in runs)
                reference = reference or first.tokens[0]
                same = sum(a == b for a, b in zip(first.tokens[0], reference, strict=False))
                results[name] = {
                    "decode_tok_s": rate,
                    "ms_per_token": 1000 / rate,
                    "setup_s": setup,
                    "tokens_equal_first_variant": same,
                    **runs[-1].decode_path,
                }
                print(
                    f"{name:<24} {rate:7.1f} tok/s  {1000 / rate:.3f} ms/token  setup {setup:5.1f} s  "
                    f"tokens equal to first variant {same}/{len(reference)}  path {runs[-1].decode_path}",
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

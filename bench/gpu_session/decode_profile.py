"""Where a decode step's GPU time goes (issue 5): the compiled decode step of the 1B, run WITHOUT a CUDA graph under
torch.profiler so every kernel is visible. Prints kernels per token, summed kernel time per token (compare with the
graph replay's ms/token from bench/generate.py: the difference is launch gaps between kernels) and the top kernels.

    python3 bench/gpu_session/decode_profile.py [--tokens 64]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="1b")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a smoke test of the script")
    args = ap.parse_args()
    from generate import build_models, prompt_ids
    from torch.profiler import ProfilerActivity, profile

    from gemma3_runtime.generate.api import decoder_for
    from gemma3_runtime.generate.engine import Engine

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    dtype = torch.bfloat16 if on_cuda else torch.float32
    _hf, ours, tokenizer, description = build_models(argparse.Namespace(model=args.model), device, dtype)
    ids = prompt_ids(tokenizer, 128, 262144)
    engine = Engine(decoder_for(ours), cuda_graphs=False, compile_step=on_cuda)
    engine.generate([ids], args.tokens)  # compile
    engine.generate([ids], args.tokens)
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    sync()
    with profile(activities=[ProfilerActivity.CUDA if on_cuda else ProfilerActivity.CPU]) as prof:
        out = engine.generate([ids], args.tokens)
        sync()
    steps = out.decode_steps + 1
    per_kernel: dict[str, list[float]] = defaultdict(list)
    for event in prof.events():
        if not on_cuda or str(getattr(event, "device_type", "")).endswith("CUDA"):
            per_kernel[event.name].append(
                event.device_time_total if hasattr(event, "device_time_total") else event.cuda_time_total
            )
    total_us = sum(sum(v) for v in per_kernel.values())
    count = sum(len(v) for v in per_kernel.values())
    print(
        f"{description}: {steps} forwards (1 prefill + {out.decode_steps} decode steps), compiled={on_cuda}, no graph"
    )
    print(
        f"kernels per forward: {count / steps:.0f}; summed kernel time per forward: {total_us / steps / 1000:.3f} ms; "
        f"host-driven decode {out.decode_steps / out.decode_s:.1f} tok/s"
    )
    print(f"{'kernel':<90} {'calls/fwd':>9} {'us/call':>8} {'us/fwd':>8}")
    for name, times in sorted(per_kernel.items(), key=lambda kv: -sum(kv[1]))[:30]:
        print(f"{name[:90]:<90} {len(times) / steps:>9.1f} {sum(times) / len(times):>8.1f} {sum(times) / steps:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

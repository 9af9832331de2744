"""Benchmark `gemma3-runtime convert import` and `export` on a 1B-size bf16 checkpoint of random weights (CPU).

The benchmark writes the HF checkpoint itself (Gemma3Config.preset("1b"), random bf16 safetensors; cached under
GEMMA3_LAUNCH_CACHE/bench), then runs each direction as the real CLI in a subprocess and samples the memory of
the whole process tree (the CLI plus megatron's checkpoint-writer subprocesses) every 50 ms:
- peak RSS summed over the tree (over-counts pages that forked writers share with their parent),
- peak PSS summed over the tree (shared pages split between sharers: the honest "memory used" figure).
Times: wall time of the subprocess (interpreter start and imports included) and the conversion time the CLI
reports in its summary line. Targets (issue 2): each direction <= 20 s, peak RSS <= 2x the checkpoint size.

    .venv/bin/python bench/convert.py [--size 1b] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "runtime"), str(REPO / "launcher")]


def write_random_hf_checkpoint(size: str, dest: Path) -> tuple[Path, int]:
    """A Gemma3ForCausalLM directory with random bf16 weights; returns (dir, bytes of weights)."""
    import torch

    from gemma3_runtime.bridge.mapping import all_hf_names
    from gemma3_runtime.bridge.safetensors_io import ShardedSafetensorsWriter
    from gemma3_runtime.model.config import Gemma3Config

    cfg = Gemma3Config.preset(size)
    if (dest / "config.json").exists():
        total = json.loads((dest / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
        return dest, total
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    d, f, h, g, hd = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_kv_heads, cfg.head_dim
    shapes = {
        "embed_tokens": (cfg.vocab_size, d),
        "q_proj": (h * hd, d),
        "k_proj": (g * hd, d),
        "v_proj": (g * hd, d),
        "o_proj": (d, h * hd),
        "gate_proj": (f, d),
        "up_proj": (f, d),
        "down_proj": (d, f),
        "q_norm": (hd,),
        "k_norm": (hd,),
    }
    gen = torch.Generator().manual_seed(0)
    writer = ShardedSafetensorsWriter(tmp)
    for name in all_hf_names(cfg.num_layers):
        key = name.split(".")[-2]
        shape = shapes.get(key, (d,))
        writer.add(name, (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16))
    writer.close()
    hf = cfg.to_hf()
    hf["dtype"] = "bfloat16"
    (tmp / "config.json").write_text(json.dumps(hf, indent=2))
    os.replace(tmp, dest)
    return dest, writer.total_bytes


class TreeMemorySampler:
    """Peak RSS and PSS summed over a process and all its descendants."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.max_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            rss = pss = 0
            for proc in procs:
                try:
                    info = proc.memory_full_info()
                    rss += info.rss
                    pss += getattr(info, "pss", info.rss)
                except psutil.Error:
                    pass
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.max_procs = max(self.max_procs, len(procs))
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_cli(args: list[str]) -> dict:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(sys.path[:2])}
    import resource

    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gemma3_runtime.cli.main", "convert", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    sampler = TreeMemorySampler(proc.pid)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"convert {args[0]} failed (rc {proc.returncode}):\n{err[-3000:]}")
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    stages = [line.split(": ", 1)[1] for line in err.splitlines() if line.startswith("INFO gemma3_runtime.convert:")]
    summary = out.strip().splitlines()[-1]
    match = re.search(r", ([0-9.]+) s", summary)
    return {
        "wall_s": wall,
        "convert_s": float(match.group(1)) if match else None,
        "peak_rss": sampler.peak_rss,
        "peak_pss": sampler.peak_pss,
        "processes": sampler.max_procs,
        "summary": summary,
        "cpu_s": cpu,
        "stages": stages,
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1b", help="Gemma3Config preset (default 1b)")
    parser.add_argument("--keep", action="store_true", help="keep the converted outputs")
    args = parser.parse_args()

    from gemma3_runtime.assets import cache_root

    print(f"writing / reusing a random {args.size} bf16 HF checkpoint ...", flush=True)
    hf_dir, ckpt_bytes = write_random_hf_checkpoint(args.size, cache_root() / "bench" / f"random-{args.size}-bf16")
    work = Path(tempfile.mkdtemp(prefix="convert-bench-"))
    try:
        imp = run_cli(
            ["import", "--hf-model", str(hf_dir), "--megatron-path", str(work / "megatron"), "--device", "cpu"]
        )
        exp = run_cli(
            [
                "export",
                "--hf-model",
                str(hf_dir),
                "--megatron-path",
                str(work / "megatron"),
                "--hf-path",
                str(work / "hf_out"),
                "--device",
                "cpu",
            ]
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    gib = 1024**3
    print(f"\ncheckpoint: {args.size}, bf16, {ckpt_bytes / gib:.2f} GiB of weights; {os.cpu_count()} CPUs")
    print(
        "| direction | wall s (incl. start-up) | conversion s | CPU s (user+sys, tree) | peak RSS GiB (tree sum) | "
        "peak PSS GiB (tree sum) | PSS / ckpt | processes | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in (("import", imp), ("export", exp)):
        print(
            f"| {name} | {r['wall_s']:.1f} | {r['convert_s']} | {r['cpu_s']:.1f} | {r['peak_rss'] / gib:.2f} | "
            f"{r['peak_pss'] / gib:.2f} | {r['peak_pss'] / ckpt_bytes:.2f}x | {r['processes']} | {r['load']:.1f} |"
        )
    for name, r in (("import", imp), ("export", exp)):
        print(f"{name} stages: " + "; ".join(r["stages"]))


if __name__ == "__main__":
    main()

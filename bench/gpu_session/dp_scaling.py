"""DP weak scaling of the real training loop (issue 8): `gemma3-runtime run` for the 1B architecture (mock data,
seq 4096, the same micro-batch per GPU, one micro-batch per GPU per step) on 1 GPU and under torchrun on 2 GPUs;
tokens/s is read from the loop's own metric lines (the window after the warm-up/compile steps).

Each `--run DP,MBS[,perf.key=value...]` is one run (default: DP 1 and DP 2 at micro-batch 2, overlap on for DP 2);
a DP>1 run's scaling is against the DP=1 run at the same micro-batch."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time

LINE = re.compile(r"iteration\s+(\d+) \|.*?tokens_per_s ([\d.e+]+)")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(dp: int, iters: int, mbs: int, overrides: list[str]) -> dict:
    args = [
        "--recipe",
        "gemma3_1b_pretrain",
        "--device",
        "cuda",
        f"train.train_iters={iters}",
        f"train.global_batch_size={mbs * dp}",
        f"train.micro_batch_size={mbs}",
        "data.seq_length=4096",
        f"logging.log_interval={iters // 2}",
        f"checkpoint.save=/tmp/dp{dp}-{int(time.time())}",
        "checkpoint.save_at_end=false",
        *overrides,
    ]
    if dp == 1:
        cmd = [sys.executable, "-m", "gemma3_runtime.cli.main", "run", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={dp}",
            f"--master-port={_port()}",
            "--master-addr=127.0.0.1",
            "-m",
            "gemma3_runtime.cli.main",
            "run",
            *args,
        ]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    rates = [(int(m.group(1)), float(m.group(2))) for m in LINE.finditer(proc.stdout)]
    result = dict(
        dp=dp,
        mbs=mbs,
        overrides=overrides,
        rc=proc.returncode,
        wall_s=round(time.time() - t0, 1),
        windows=rates,
        tokens_per_s=rates[-1][1] if rates else None,
    )
    if proc.returncode != 0 or not rates:
        result["tail"] = proc.stdout[-2000:] + proc.stderr[-3000:]
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--json", default=None)
    parser.add_argument("--run", action="append", default=None, metavar="DP,MBS[,perf.key=value...]")
    args = parser.parse_args()
    specs = args.run or ["1,2", "2,2,perf.overlap_grad_reduce=true"]
    rows = []
    for spec in specs:
        dp, mbs, *overrides = spec.split(",")
        rows.append(run(int(dp), args.iters, int(mbs), overrides))
    for row in rows:
        one = next((r["tokens_per_s"] for r in rows if r["dp"] == 1 and r["mbs"] == row["mbs"]), None)
        if row["dp"] > 1 and one and row["tokens_per_s"]:
            row["scaling_vs_1gpu"] = round(row["tokens_per_s"] / one, 3)
    print(
        "\n".join(
            f"DP={r['dp']} mbs={r['mbs']} {' '.join(r['overrides'])}: {r['tokens_per_s']} tokens/s "
            f"(x{r.get('scaling_vs_1gpu', 1.0)})"
            for r in rows
        )
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()

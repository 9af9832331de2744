"""Read a torch.profiler chrome trace of one training step: where the device time goes, and where the device waits.

WHY: the profiler's key_averages table gives kernel totals but not the idle time between kernels, and a step whose
device time is 846 ms in a 899 ms wall step (H200, `fast2-mbs4-ga4`) has ~50 ms in which the GPU waits for the host.
Each idle gap is charged to the host code that launched the kernel ending it (found through the launch's correlation
id): the enclosing user annotations and the innermost Python frames on the launching thread.

Pure Python (json only), so it runs anywhere; `summarize(path)` returns the report text.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATS = ("cuda_runtime", "cuda_driver")
HOST_CATS = ("cpu_op", "user_annotation", "python_function")

#: kernel name -> family (first match wins); everything else is "other"
FAMILIES = (
    ("gemm", r"nvjet|gemm|cutlass|sm90_xmma|cublas"),
    ("flash/cudnn attention", r"flash|fmha|sdpa|cudnn"),
    ("adam", r"multi_tensor_apply|adam"),
    ("triton: norm (rsqrt/pow/mean)", r"^triton_.*(rsqrt|pow)"),
    ("triton: geglu", r"geglu|gelu"),
    ("triton: cross-entropy", r"^triton_.*(exp_gather|log_mul|_ce_)|cross_entropy"),
    ("triton: other", r"^triton_|_kernel$"),
    ("copy / memcpy", r"copy|Memcpy|memcpy"),
    ("memset / fill", r"fill|Memset|memset|zero"),
    ("reduce", r"reduce"),
    ("elementwise", r"elementwise"),
)


def _family(name: str) -> str:
    for fam, pattern in FAMILIES:
        if re.search(pattern, name, re.IGNORECASE):
            return fam
    return "other"


def _host_stacks(events: list[dict], queries: dict[int, list[float]]) -> dict[tuple[int, float], list[dict]]:
    """For each (tid, ts) query: the host events on that thread that enclose ts, outermost first."""
    by_tid: dict[int, list[dict]] = defaultdict(list)
    for e in events:
        by_tid[e["tid"]].append(e)
    out: dict[tuple[int, float], list[dict]] = {}
    for tid, times in queries.items():
        evs = sorted(by_tid.get(tid, []), key=lambda e: (e["ts"], -e.get("dur", 0)))
        stack: list[dict] = []
        i = 0
        for ts in sorted(times):
            while i < len(evs) and evs[i]["ts"] <= ts:
                e = evs[i]
                while stack and stack[-1]["ts"] + stack[-1].get("dur", 0) < e["ts"]:
                    stack.pop()
                stack.append(e)
                i += 1
            while stack and stack[-1]["ts"] + stack[-1].get("dur", 0) < ts:
                stack.pop()
            out[(tid, ts)] = [e for e in stack if e["ts"] + e.get("dur", 0) >= ts]
    return out


def _where(stack: list[dict]) -> str:
    """Outermost annotation + the innermost two Python frames + the innermost op: a short name for host code."""
    notes = [e["name"] for e in stack if e.get("cat") == "user_annotation"]
    frames = [e["name"] for e in stack if e.get("cat") == "python_function"]
    ops = [e["name"] for e in stack if e.get("cat") == "cpu_op"]
    parts = [notes[0] if notes else "-"]
    parts += [re.sub(r"^.*/(site-packages|gemma3_runtime|megatron)/", r"\1/", f) for f in frames[-2:]]
    parts.append(ops[-1] if ops else "-")
    return " | ".join(parts)


def summarize(path: str | Path, min_gap_us: float = 5.0, top: int = 25) -> str:
    trace = json.loads(Path(path).read_text())
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    device = sorted((e for e in events if e.get("cat") in DEVICE_CATS), key=lambda e: e["ts"])
    if not device:
        return "trace summary: no device events\n"
    launches = {
        e["args"]["correlation"]: e
        for e in events
        if e.get("cat") in LAUNCH_CATS and "correlation" in e.get("args", {})
    }
    host = [e for e in events if e.get("cat") in HOST_CATS]

    families: dict[str, float] = defaultdict(float)
    for e in device:
        families[_family(e["name"])] += e.get("dur", 0.0)

    first, busy_end = device[0]["ts"], device[0]["ts"] + device[0].get("dur", 0.0)
    busy = device[0].get("dur", 0.0)
    gaps: list[tuple[float, dict]] = []
    for e in device[1:]:
        start, end = e["ts"], e["ts"] + e.get("dur", 0.0)
        if start - busy_end >= min_gap_us:
            gaps.append((start - busy_end, e))
        busy += max(0.0, end - max(start, busy_end))
        busy_end = max(busy_end, end)
    span = busy_end - first

    queries: dict[int, list[float]] = defaultdict(list)
    for _, k in gaps:
        launch = launches.get(k.get("args", {}).get("correlation"))
        if launch is not None:
            queries[launch["tid"]].append(launch["ts"])
    stacks = _host_stacks(host, queries)
    by_where: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for gap, k in gaps:
        launch = launches.get(k.get("args", {}).get("correlation"))
        where = _where(stacks.get((launch["tid"], launch["ts"]), [])) if launch else "(no launch record)"
        by_where[where][0] += gap
        by_where[where][1] += 1

    lines = [
        f"device span {span / 1e3:.1f} ms, busy {busy / 1e3:.1f} ms, idle {(span - busy) / 1e3:.1f} ms "
        f"in {len(gaps)} gaps >= {min_gap_us:.0f} us ({sum(g for g, _ in gaps) / 1e3:.1f} ms)",
        "device time by kernel family (ms):",
    ]
    for fam, us in sorted(families.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {us / 1e3:9.2f}  {fam}")
    lines.append("idle gaps by the host code that launched the next kernel (ms, count):")
    for where, (us, n) in sorted(by_where.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"  {us / 1e3:8.2f} {n:6d}  {where}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    print(summarize(sys.argv[1]))

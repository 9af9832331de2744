"""bench/gpu_session/trace_summary.py charges each idle gap of the device to the host code that launched the kernel
ending it, and sums device time by kernel family (a synthetic chrome trace with known gaps)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "gpu_session"))
from trace_summary import summarize  # noqa: E402

pytestmark = pytest.mark.unit


def _x(cat: str, name: str, ts: float, dur: float, tid: int = 1, corr: int | None = None) -> dict:
    e = {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": tid}
    if corr is not None:
        e["args"] = {"correlation": corr}
    return e


def test_gaps_are_charged_to_the_launching_host_code(tmp_path: Path) -> None:
    events = [
        _x("user_annotation", "step: forward_backward", 0, 100),
        _x("python_function", "megatron/core/schedules.py(10): forward_step", 1, 50),
        _x("cpu_op", "aten::mm", 2, 5),
        _x("cuda_runtime", "cudaLaunchKernel", 3, 1, corr=1),
        _x("user_annotation", "step: optimizer", 200, 100),
        _x("cpu_op", "aten::_fused_adamw_", 250, 10),
        _x("cuda_runtime", "cudaLaunchKernel", 255, 1, corr=2),
        _x("cuda_runtime", "cudaLaunchKernel", 256, 1, corr=3),
        _x("kernel", "nvjet_sm90_tst_192x192", 10, 100, tid=7, corr=1),
        _x("kernel", "multi_tensor_apply_kernel", 300, 20, tid=7, corr=2),  # 190 us idle before it
        _x("kernel", "triton_red_fused_add_mean_mul_pow_rsqrt_4", 322, 8, tid=7, corr=3),  # 2 us: below threshold
    ]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    text = summarize(path)
    assert "busy 0.1 ms, idle 0.2 ms in 1 gaps" in text
    gap_lines = text.split("idle gaps by")[1].strip().splitlines()[1:]
    assert len(gap_lines) == 1 and "0.19" in gap_lines[0]
    assert "step: optimizer" in gap_lines[0] and "aten::_fused_adamw_" in gap_lines[0]
    families = text.split("kernel family (ms):")[1].split("idle gaps")[0]
    assert "gemm" in families and "adam" in families and "triton: norm" in families

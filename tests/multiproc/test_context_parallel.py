"""CP=1 (the same code on one process), CP=2 and CP=4 (gloo, CPU processes, fp32) give the outputs and dQ/dK/dV of
full attention within 1e-5 relative (normwise per tensor), for global and sliding-window layers, windows inside one
chunk and spanning several, with and without packed documents; and with the plain-torch bottom-right band kernel in
the fused GPU kernel's place (chunk_kernels.reference_chunk_attention), and for packed documents its varlen form
(chunk_kernels.reference_varlen_chunk_attention: the fused varlen kernel's document pieces, plain torch per piece)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.slow]

SEQ_LEN = 32  # chunks of 8 tokens at CP=2, 4 at CP=4
WINDOWS = {"global": None, "window_inside_chunk": 3, "window_spans_chunks": 11}
TOLERANCE = 1e-5


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cases() -> list[dict]:
    """Every window with and without packed documents on the masked path; every window unpacked with the reference
    chunk kernel in the fused kernel's place (the GPU path's key slicing), and packed with the reference varlen
    kernel in the fused varlen kernel's place (its document pieces)."""
    masked = [
        {"seq_len": SEQ_LEN, "window": window, "packed": packed, "seed": seed, "kernel": "masked"}
        for seed, (window, packed) in enumerate((w, p) for w in WINDOWS.values() for p in (False, True))
    ]
    band = [
        {"seq_len": SEQ_LEN, "window": window, "packed": False, "seed": 100 + seed, "kernel": "reference"}
        for seed, window in enumerate(WINDOWS.values())
    ]
    varlen = [
        {"seq_len": SEQ_LEN, "window": window, "packed": True, "seed": 200 + seed, "kernel": "reference_varlen"}
        for seed, window in enumerate(WINDOWS.values())
    ]
    return masked + band + varlen


@pytest.mark.parametrize("cp_size", [1, 2, 4])
def test_context_parallel_attention_matches_full(cp_size, tmp_path):
    out = tmp_path / "errors.json"
    repo = Path(__file__).resolve().parents[2]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={cp_size}",
        "--nnodes=1",
        f"--master-port={_port()}",
        "--master-addr=127.0.0.1",
        str(repo / "tests" / "multiproc" / "run_function.py"),
        "context_parallel_worker:run_cases",
        json.dumps({"cases": _cases(), "out_path": str(out)}),
    ]
    path = os.pathsep.join([str(repo / "tests" / "multiproc"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["cp_size"] == cp_size
    assert len(report["results"]) == len(_cases())
    for result in report["results"]:
        errors = dict(result["errors"])
        if result["window"] is not None:
            assert errors.pop("off_by_one_window") > 1e-2, result  # the check distinguishes W from W+1
        for tensor, error in errors.items():
            assert error <= TOLERANCE, (cp_size, result["window"], result["packed"], result["kernel"], tensor, error)

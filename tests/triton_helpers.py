"""Test-only helper: run a check script against the hand-written Triton kernels (gemma3_runtime/perf/*_triton.py).

On a GPU the script runs directly; on CPU through the Triton interpreter, in a subprocess because TRITON_INTERPRET
must be set before triton is imported. The script prints "ok" when every assertion held.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch


def run_triton_check(script: str, **extra_env: str) -> None:
    pytest.importorskip("triton", reason="needs triton (ships with CUDA builds of torch)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **extra_env)
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]

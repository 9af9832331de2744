"""Triton, where this process has it: the one import the hand-written kernels (perf/*_triton.py) share.

CPU wheels of torch do not ship triton, so `triton` / `tl` are None there and the kernels' callers keep their torch
formulas. With TRITON_INTERPRET=1 (set before triton is imported) the kernels run on CPU tensors: how the unit tests
check them without a GPU.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None


def available(like: torch.Tensor) -> bool:
    """True when a kernel can run on tensors like `like` (CUDA with triton, or the Triton interpreter)."""
    if triton is None:
        return False
    return like.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"

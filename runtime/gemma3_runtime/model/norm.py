"""Gemma's (1 + w) RMSNorm, computed entirely in fp32 and cast back once (as HF and the JAX reference do)."""

from __future__ import annotations

import torch
from torch import nn


class Gemma3RMSNorm(nn.Module):
    """y = x / rms(x) * (1 + w), all in fp32; only the result is cast to the input dtype.

    The weight `w` is stored exactly as HF stores it (zero-initialised, no +1 folded in), so checkpoints and the
    bridge never transform norm weights. The constructor matches megatron-core's norm builders
    (`config=..., hidden_size=..., eps=...`), so the same class serves input / pre-MLP / q / k / final / post norms.
    """

    def __init__(self, config=None, hidden_size: int = 0, eps: float = 1e-6, **_unused) -> None:
        super().__init__()
        dtype = getattr(config, "params_dtype", torch.float32) if config is not None else torch.float32
        device = "cpu" if getattr(config, "use_cpu_initialization", True) else None
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(hidden_size, dtype=dtype, device=device))
        # megatron's finalize_model_grads all-reduces grads of params marked sequence_parallel over TP
        self.weight.sequence_parallel = bool(getattr(config, "sequence_parallel", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, (1+w) in fp32"

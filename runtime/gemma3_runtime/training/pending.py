"""A training step's numbers (loss sum, token count, grad norm), read by the host only once the GPU has them.

WHY: `float(loss)` right after a step makes the host wait for the GPU to finish that step; the GPU then idles while the
host launches the next step's first kernels, and wherever the host is slower than the GPU (the start of a forward, the
optimizer's per-parameter Python) it stays idle (docs/PERFORMANCE.md). The loop instead captures each step's values with
a non-blocking copy to pinned host memory plus an event, launches the next step, and only then reads the previous one -
the host stays a step ahead of the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Number = float | torch.Tensor


@dataclass
class StepValues:
    iteration: int
    lr: float
    loss: float
    count: float
    grad_norm: float


class PendingStep:
    """Device values of one step on their way to the host: building it costs no wait, `resolve` waits for them."""

    def __init__(self, iteration: int, lr: float, totals: torch.Tensor, grad_norm: Number) -> None:
        self.iteration, self.lr = iteration, lr
        values = [totals.reshape(-1)[:2].to(torch.float64)]
        values.append(
            grad_norm.detach().reshape(1).to(device=totals.device, dtype=torch.float64)
            if isinstance(grad_norm, torch.Tensor)
            else torch.tensor([float(grad_norm)], dtype=torch.float64, device=totals.device)
        )
        packed = torch.cat(values)
        self._event: torch.cuda.Event | None = None
        if packed.is_cuda:
            self._host = torch.empty(3, dtype=torch.float64, pin_memory=True)
            self._host.copy_(packed, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = packed

    def ready(self) -> bool:
        return self._event is None or self._event.query()

    def resolve(self) -> StepValues:
        if self._event is not None:
            self._event.synchronize()
        loss_sum, count, norm = (float(v) for v in self._host)
        return StepValues(self.iteration, self.lr, loss_sum / max(count, 1.0), count, norm)

"""Learning rate per iteration: linear warmup from lr_warmup_init, then cosine/linear decay to min_lr, then flat.

A pure function of the iteration number, so a resumed run needs no scheduler state to get the same LR.
"""

from __future__ import annotations

import math


def learning_rate(
    iteration: int,
    max_lr: float,
    min_lr: float,
    warmup_iters: int,
    decay_iters: int,
    style: str = "cosine",
    warmup_init: float = 0.0,
) -> float:
    """LR for 1-based `iteration` (the step being taken)."""
    if warmup_iters > 0 and iteration <= warmup_iters:
        return warmup_init + (max_lr - warmup_init) * iteration / warmup_iters
    if style == "constant":
        return max_lr
    span = max(decay_iters - warmup_iters, 1)
    ratio = min(max((iteration - warmup_iters) / span, 0.0), 1.0)
    if style == "linear":
        return max_lr - (max_lr - min_lr) * ratio
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * ratio))

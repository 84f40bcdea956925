"""What the training loops share: the optimiser's config fields and the schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class OptimConfig:
    """The optimisation every training loop takes (AdamW, warm-up then cosine, clipping);
    each loop's config adds its own fields. No defaults: params is where numbers live."""

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float


def warmup_cosine(step: int, lr: float, warmup_steps: int, steps: int) -> float:
    """Linear warm-up to `lr` over `warmup_steps`, then cosine decay to zero at `steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, steps - warmup_steps)
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / span))

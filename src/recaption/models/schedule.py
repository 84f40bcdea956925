"""The learning-rate schedule the captioner and generator trainings share."""

from __future__ import annotations

import math


def warmup_cosine(step: int, lr: float, warmup_steps: int, steps: int) -> float:
    """Linear warm-up to `lr` over `warmup_steps`, then cosine decay to zero at `steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, steps - warmup_steps)
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / span))

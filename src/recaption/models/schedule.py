"""What the training loops share: the optimiser's config fields and the schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Self


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
    # Micro-batches per optimizer step (`training.fit`): the batch is computed in this many
    # slices whose gradients add up, to fit a batch in less memory. The one default here:
    # the contrastive configs have no such key (their loss does not split, see clip_train).
    grad_accumulation: int = field(default=1, kw_only=True)

    @classmethod
    def of(cls, section: Any, **values: Any) -> Self:
        """This config from a params section (a pydantic model): the section's
        fields that the config has, then `values` (what the section does not hold, or
        holds in another form: the seed, the resolved precision). A section may hold more
        (its device, its stage's own keys); they stay out."""
        # Only these keys are read: what a stage reads of its params is what dvc.yaml
        # must declare (a test records the reads).
        held = type(section).model_fields.keys() - values.keys()
        taken = {f.name: getattr(section, f.name) for f in fields(cls) if f.name in held}
        return cls(**taken, **values)


def warmup_cosine(step: int, lr: float, warmup_steps: int, steps: int) -> float:
    """Linear warm-up to `lr` over `warmup_steps`, then cosine decay to zero at `steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, steps - warmup_steps)
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / span))

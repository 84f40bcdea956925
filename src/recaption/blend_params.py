"""The caption blend as params.yaml configures it (`blend.*`, the global `seed`).

Shared by the blend stage, which draws the captions, and train_generator, which
redraws them every epoch in per_epoch mode: both must build the same Blend.
"""

from __future__ import annotations

from recaption.blend import Blend
from recaption.params import Params


def blend_of(params: Params) -> Blend:
    """The Blend that `blend.*` and the global seed describe."""
    bp = params.blend
    return Blend(
        bp.synthetic_ratio, bp.synthetic_kind, bp.short_fraction, bp.mode, params.seed,
        bp.use_upsampled,
    )  # fmt: skip

"""The built-in world as params.yaml configures it (`data.image_size`, `data.synthetic`)."""

from __future__ import annotations

from recaption.params import Params
from recaption.world import WorldConfig


def world_config(params: Params) -> WorldConfig:
    """The synthetic world's config from `data.*` params."""
    syn = params.data.synthetic
    return WorldConfig(
        image_size=params.data.image_size,
        min_objects=syn.min_objects,
        max_objects=syn.max_objects,
        text_probability=syn.text_probability,
        repeat_probability=syn.repeat_probability,
        alt_mix=syn.alt_text.model_dump(),
    )

"""One training example: a scene, its image and its three captions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .captions import alt_text, descriptive_caption, short_caption
from .config import WorldConfig
from .render import render
from .scene import Scene, sample_scene


@dataclass(frozen=True)
class Example:
    """A rendered scene with its alt-text (`caption`, of kind `alt_kind`) and two recaptions."""

    scene: Scene
    image: Image.Image
    caption: str
    short: str
    descriptive: str
    alt_kind: str

    def to_dict(self) -> dict[str, Any]:
        """Everything but the image, JSON-serialisable."""
        return {
            "scene": self.scene.to_dict(),
            "caption": self.caption,
            "short": self.short,
            "descriptive": self.descriptive,
            "alt_kind": self.alt_kind,
        }


def example_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for example `index`: a function of (seed, index) only, so examples
    can be made in any order, in any process."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.default_rng([seed, index])


def make_example(seed: int, index: int, cfg: WorldConfig) -> Example:
    """Sample, render and caption example `index` of the dataset seeded by `seed`."""
    rng = example_rng(seed, index)
    return caption_example(sample_scene(rng, cfg), rng, cfg)


def caption_example(scene: Scene, rng: np.random.Generator, cfg: WorldConfig) -> Example:
    """Render `scene` and write its three captions with the draws of `rng`."""
    caption, kind = alt_text(scene, rng, cfg.alt_mix)
    short = short_caption(scene, rng)
    descriptive = descriptive_caption(scene, rng)
    return Example(scene, render(scene, cfg.image_size), caption, short, descriptive, kind)

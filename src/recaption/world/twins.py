"""Twins: a scene and its minimal pair, the same scene with one shape changed.

Contrastive training tells the images of a batch apart by whatever is easiest: in
this world colour, background and place already do, so neither tower needs shape.
A twin differs from its original in one shape only (colour, size, cell, jitter,
background and glyph are the same), and its captions come from the same random
draws as the original's, so they differ only in that shape's word. Put in one batch,
the two can only be matched to their captions by shape: image-level hard negatives,
where NegCLIP's are text only (`negatives.py`).

Counts stay true. The shape changes for a whole (colour, shape) group at once, and
never to a shape another object of that colour has, so the twin's groups, counts and
sizes are the original's and every caption counts the same. Most groups are one
object; a repeated group ("three blue squares") changes as a whole ("three blue
stars"), since changing one of its members would change the count.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .config import WorldConfig
from .example import Example, caption_example, example_rng
from .scene import Scene, pick, sample_scene
from .vocab import SHAPES

# The twin's own random stream beside example_rng's, so an example's draws are the
# same whether or not it has a twin.
TWIN_STREAM = 1


def twin_rng(seed: int, index: int) -> np.random.Generator:
    """The generator deciding example `index`'s twin: a function of (seed, index) only."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.default_rng([seed, index, TWIN_STREAM])


def twin_scene(scene: Scene, rng: np.random.Generator) -> Scene:
    """`scene` with one (colour, shape) group's shape replaced by another.

    The group (uniform over the scene's groups) and the new shape (uniform over the
    shapes no object of that colour has) are drawn from `rng`; everything else is kept.
    """
    keys = list(dict.fromkeys((o.colour, o.shape) for o in scene.objects))  # reading order
    colour, old = keys[int(rng.integers(len(keys)))]
    # Only six groups of one colour leave no shape free (the default world draws at most
    # four objects).
    free = [s for s in SHAPES if (colour, s) not in keys]
    if not free:
        raise ValueError(f"every shape is taken in {colour!r}: no twin for this scene")
    new = pick(rng, free)
    objects = tuple(
        replace(o, shape=new) if (o.colour, o.shape) == (colour, old) else o for o in scene.objects
    )
    return replace(scene, objects=objects)


def twin_example(seed: int, index: int, cfg: WorldConfig, share: float = 1.0) -> Example | None:
    """Example `index`'s twin (see the module's docstring), or None for the 1 - `share`
    of indices drawn without one.

    The twin's captions replay the original's draws (`make_example`'s generator after
    the scene), so alt-text, short and descriptive caption each differ from the
    original's only in the changed shape's word, or not at all where they do not name it.
    """
    rng = twin_rng(seed, index)
    if rng.random() >= share:
        return None
    draws = example_rng(seed, index)
    scene = sample_scene(draws, cfg)
    return caption_example(twin_scene(scene, rng), draws, cfg)

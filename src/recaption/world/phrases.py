"""Small building blocks shared by captions and prompts: articles, noun phrases,
position phrases and lists.

Every phrase here is one the parser in `parse.py` reads back; keep the two in
step (the tests check that they are).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .scene import Scene, SceneObject, pick
from .vocab import NUMBER_WORDS, SHAPE_PLURALS

# Several ways to say each grid position after an object mention.
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("at the top left", "in the top left corner", "in the upper left"),
    "top": ("at the top", "at the top of the image", "along the top edge"),
    "top right": ("at the top right", "in the top right corner", "in the upper right"),
    "left": ("on the left", "at the left", "on the left side"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "at the right", "on the right side"),
    "bottom left": ("at the bottom left", "in the bottom left corner", "in the lower left"),
    "bottom": ("at the bottom", "at the bottom of the image", "along the bottom edge"),
    "bottom right": ("at the bottom right", "in the bottom right corner", "in the lower right"),
}


def with_article(phrase: str) -> str:
    """Prefix "a" or "an" (by spelling, which is right for this vocabulary)."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def noun(colour: str | None, shape: str, size: str | None = None, count: int = 1) -> str:
    """'large red circle', 'three blue squares', 'star' (no article)."""
    words = [NUMBER_WORDS[count]] if count > 1 else []
    words += [w for w in (size, colour) if w]
    words.append(SHAPE_PLURALS[shape] if count > 1 else shape)
    return " ".join(words)


def join_list(items: Sequence[str], comma: bool = False) -> str:
    """'a', 'a and b', 'a, b, and c'.

    The comma before "and" (always there for three or more, on request for two)
    closes the previous item's clause, which the parser relies on to attach
    positions to the right object.
    """
    if len(items) <= 1:
        return "".join(items)
    sep = ", and " if comma or len(items) > 2 else " and "
    return ", ".join(items[:-1]) + sep + items[-1]


def position_phrase(rng: np.random.Generator, position: str) -> str:
    return pick(rng, POSITION_PHRASES[position])


def position_list(rng: np.random.Generator, positions: Sequence[str]) -> str:
    """'in the center' for one position, 'at the top left and the bottom right' for several."""
    if len(positions) == 1:
        return position_phrase(rng, positions[0])
    return "at " + join_list([f"the {p}" for p in positions])


def groups(scene: Scene) -> list[list[SceneObject]]:
    """Objects grouped by (colour, shape), the main object's group first, then reading order."""
    by_key: dict[tuple[str, str], list[SceneObject]] = {}
    for obj in scene.objects:
        by_key.setdefault((obj.colour, obj.shape), []).append(obj)
    main = scene.main_object
    first = by_key.pop((main.colour, main.shape))
    return [first, *by_key.values()]


def group_count(scene: Scene, colour: str, shape: str) -> int:
    return sum(1 for o in scene.objects if (o.colour, o.shape) == (colour, shape))


def glyph_phrase(kind: str, glyph: str) -> str:
    return f'the {kind} "{glyph}"'

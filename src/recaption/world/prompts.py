"""An evaluation prompt suite in the categories of GenEval.

Each prompt comes twice: a short GenEval-style prompt ("a photo of three blue
squares") and the same demand phrased like a descriptive caption, the way
DALL-E 3 upsamples prompts. The descriptive form may fill in details the short
prompt leaves free (a colour, sizes, grid cells, a background) but never
contradicts `demands`, which is what an evaluator checks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .phrases import capitalise, join_list, noun, position_phrase, with_article
from .scene import pick
from .vocab import BACKGROUNDS, COLOUR_NAMES, POSITIONS, SHAPES

CATEGORIES: tuple[str, ...] = (
    "single_object",
    "two_objects",
    "counting",
    "colors",
    "position",
    "color_attr",
)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
COUNTS: tuple[int, ...] = (2, 3, 4)
# Separates the prompt streams from make_example's [seed, index] streams.
_PROMPT_STREAM = 104729
# Consecutive duplicate draws after which a category is taken to be exhausted.
_MAX_DUPLICATES = 500


@dataclass(frozen=True)
class Prompt:
    """One evaluation prompt; `demands` is JSON-serialisable."""

    id: str
    category: str
    prompt: str
    descriptive: str
    demands: dict[str, Any] = field(hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "category": self.category,
            "prompt": self.prompt,
            "descriptive": self.descriptive,
            "demands": copy.deepcopy(self.demands),
        }


# What a category maker returns: prompt, descriptive phrase, demanded objects, relation.
Draft = tuple[str, str, list[dict[str, Any]], str | None]


def _demand(shape: str, colour: str | None, count: int = 1) -> dict[str, Any]:
    return {"shape": shape, "colour": colour, "count": count}


def _on_background(rng: np.random.Generator, phrase: str) -> str:
    """Add a background in one of the descriptive captions' sentence orders."""
    bg = pick(rng, BACKGROUNDS)
    return pick(
        rng,
        (
            f"{capitalise(phrase)}, on a {bg} background.",
            f"On a {bg} background, {phrase}.",
            f"{capitalise(phrase)}. The background is {bg}.",
            f"An image with a {bg} background showing {phrase}.",
        ),
    )


def _two_shapes(rng: np.random.Generator) -> tuple[str, str]:
    first, second = rng.permutation(len(SHAPES))[:2]
    return SHAPES[int(first)], SHAPES[int(second)]


def _single_object(rng: np.random.Generator) -> Draft:
    shape = pick(rng, SHAPES)
    desc = with_article(noun(pick(rng, COLOUR_NAMES), shape, "large"))
    prompt = f"a photo of {with_article(shape)}"
    return prompt, _on_background(rng, desc), [_demand(shape, None)], None


def _two_objects(rng: np.random.Generator) -> Draft:
    a, b = _two_shapes(rng)
    desc = join_list(
        [
            with_article(noun(pick(rng, COLOUR_NAMES), a, "large")),
            with_article(noun(pick(rng, COLOUR_NAMES), b, "small")),
        ]
    )
    prompt = f"a photo of {with_article(a)} and {with_article(b)}"
    return prompt, _on_background(rng, desc), [_demand(a, None), _demand(b, None)], None


def _counting(rng: np.random.Generator) -> Draft:
    shape, colour, n = pick(rng, SHAPES), pick(rng, COLOUR_NAMES), pick(rng, COUNTS)
    phrase = noun(colour, shape, count=n)
    return f"a photo of {phrase}", _on_background(rng, phrase), [_demand(shape, colour, n)], None


def _colors(rng: np.random.Generator) -> Draft:
    shape, colour = pick(rng, SHAPES), pick(rng, COLOUR_NAMES)
    prompt = f"a photo of {with_article(noun(colour, shape))}"
    desc = with_article(noun(colour, shape, "large"))
    return prompt, _on_background(rng, desc), [_demand(shape, colour)], None


def _color_attr(rng: np.random.Generator) -> Draft:
    a, b = _two_shapes(rng)
    ca, cb = (COLOUR_NAMES[int(i)] for i in rng.permutation(len(COLOUR_NAMES))[:2])
    prompt = f"a photo of {with_article(noun(ca, a))} and {with_article(noun(cb, b))}"
    desc = join_list([with_article(noun(ca, a, "large")), with_article(noun(cb, b, "small"))])
    return prompt, _on_background(rng, desc), [_demand(a, ca), _demand(b, cb)], None


def _relation_cells(rng: np.random.Generator, relation: str) -> tuple[str, str]:
    """Two grid positions where the first is `relation` the second (same row or column)."""
    line, (near, far) = int(rng.integers(3)), sorted(int(i) for i in rng.permutation(3)[:2])
    cells = {
        "left of": ((line, near), (line, far)),
        "right of": ((line, far), (line, near)),
        "above": ((near, line), (far, line)),
        "below": ((far, line), (near, line)),
    }
    by_cell = {rc: name for name, rc in POSITIONS.items()}
    first, second = cells[relation]
    return by_cell[first], by_cell[second]


def _position(rng: np.random.Generator) -> Draft:
    a, b = _two_shapes(rng)
    ca, cb = pick(rng, COLOUR_NAMES), pick(rng, COLOUR_NAMES)
    relation = pick(rng, RELATIONS)
    words = {"left of": "to the left of", "right of": "to the right of"}.get(relation, relation)
    prompt = f"a photo of {with_article(noun(ca, a))} {words} {with_article(noun(cb, b))}"
    pa, pb = _relation_cells(rng, relation)
    desc = join_list(
        [
            f"{with_article(noun(ca, a, 'large'))} {position_phrase(rng, pa)}",
            f"{with_article(noun(cb, b, 'small'))} {position_phrase(rng, pb)}",
        ],
        comma=True,
    )
    return prompt, _on_background(rng, desc), [_demand(a, ca), _demand(b, cb)], relation


_MAKERS: dict[str, Callable[[np.random.Generator], Draft]] = {
    "single_object": _single_object,
    "two_objects": _two_objects,
    "counting": _counting,
    "colors": _colors,
    "position": _position,
    "color_attr": _color_attr,
}


def _category(seed: int, index: int, category: str, per_category: int) -> list[Prompt]:
    rng = np.random.default_rng([seed, _PROMPT_STREAM, index])
    out: list[Prompt] = []
    seen: set[str] = set()
    misses = 0
    while len(out) < per_category:
        prompt, desc, objects, relation = _MAKERS[category](rng)
        if prompt in seen and misses < _MAX_DUPLICATES:
            misses += 1
            continue
        if prompt in seen:  # every distinct prompt used: start another round
            seen.clear()
        seen.add(prompt)
        misses = 0
        demands = {"objects": objects, "relation": relation}
        out.append(Prompt(f"{category}-{len(out):03d}", category, prompt, desc, demands))
    return out


def prompt_suite(seed: int, per_category: int) -> list[Prompt]:
    """`per_category` prompts for each GenEval category, deterministic from `seed`.

    Prompts within a category are distinct until every distinct prompt of that
    category has been used (e.g. single_object has only len(SHAPES) of them).
    For "position", demands["relation"] says how object 0 stands to object 1.
    """
    if per_category < 0:
        raise ValueError(f"per_category must be >= 0, got {per_category}")
    suite: list[Prompt] = []
    for index, category in enumerate(CATEGORIES):
        suite.extend(_category(seed, index, category, per_category))
    return suite

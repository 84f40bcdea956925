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

from .phrases import capitalise, group_count, join_list, noun, position_phrase, with_article
from .scene import Scene, SceneObject, pick
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
_RELATION_WORDS = {"left of": "to the left of", "right of": "to the right of"}
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
    words = _RELATION_WORDS.get(relation, relation)
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


def _relation(a: SceneObject, b: SceneObject) -> str | None:
    """How `a` stands to `b` in the suite's sense (same row or column), if it does."""
    (ra, ca), (rb, cb) = a.cell, b.cell
    if ra == rb:
        return "left of" if ca < cb else "right of"
    if ca == cb:
        return "above" if ra < rb else "below"
    return None


def _coloured(obj: SceneObject) -> str:
    return with_article(noun(obj.colour, obj.shape))


def scene_prompt(scene: Scene, rng: np.random.Generator) -> tuple[str, str, dict[str, Any]]:
    """(category, prompt, demands): a prompt in the suite's phrasing that `scene` satisfies.

    The category is drawn among those the scene can satisfy: every scene has a
    single object and a coloured one; counting needs a repeated coloured shape,
    two_objects two shapes, color_attr two shapes of two colours, and position two
    shapes in one row or column. It teaches the built-in upsampler the form of the
    prompts people write, from scenes of the training subset (never the suite's).
    """
    objects = list(scene.objects)
    pairs = [(a, b) for a in objects for b in objects if a.shape != b.shape]
    repeated = [(o, n) for o in objects if (n := group_count(scene, o.colour, o.shape)) > 1]
    coloured = [(a, b) for a, b in pairs if a.colour != b.colour]
    related = [(a, b, r) for a, b in pairs if (r := _relation(a, b))]
    feasible = {
        "single_object": True,
        "colors": True,
        "counting": bool(repeated),
        "two_objects": bool(pairs),
        "color_attr": bool(coloured),
        "position": bool(related),
    }
    category = pick(rng, [c for c in CATEGORIES if feasible[c]])
    relation = None
    if category == "single_object":
        obj = pick(rng, objects)
        phrase, objs = with_article(obj.shape), [_demand(obj.shape, None)]
    elif category == "colors":
        obj = pick(rng, objects)
        phrase, objs = _coloured(obj), [_demand(obj.shape, obj.colour)]
    elif category == "counting":
        obj, n = pick(rng, repeated)
        phrase, objs = noun(obj.colour, obj.shape, count=n), [_demand(obj.shape, obj.colour, n)]
    elif category == "two_objects":
        pair = pick(rng, pairs)
        phrase = " and ".join(with_article(o.shape) for o in pair)
        objs = [_demand(o.shape, None) for o in pair]
    elif category == "color_attr":
        pair = pick(rng, coloured)
        phrase = " and ".join(_coloured(o) for o in pair)
        objs = [_demand(o.shape, o.colour) for o in pair]
    else:
        a, b, relation = pick(rng, related)
        phrase = f"{_coloured(a)} {_RELATION_WORDS.get(relation, relation)} {_coloured(b)}"
        objs = [_demand(a.shape, a.colour), _demand(b.shape, b.colour)]
    return category, f"a photo of {phrase}", {"objects": objs, "relation": relation}

"""Is an upsampled prompt faithful to the short one? Facts kept, facts contradicted.

Facts are read with the built-in world's parser (`world.parse`), plus two kinds the
parser leaves out because captions never need them but prompts do: a shape named
without a colour ("a photo of a star and a cross") and a relation between two
coloured shapes ("a red circle to the left of a blue square"). A fact of the short
text is kept when the upsampled text states it too; a relation is kept when the
rewrite places the two shapes so that it holds (grid cells, as the evaluation judges).
The upsampled text contradicts the short one when it states, for the same thing,
another value: another count of the same coloured shape, only other positions for
it, another background, another glyph of written text, or places the two shapes of
a relation only the other way round.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from recaption.world.parse import Fact, parse_caption
from recaption.world.vocab import COLOUR_NAMES, POSITIONS, SHAPE_PLURALS, SHAPES

_SHAPE_WORD = {**{s: s for s in SHAPES}, **{p: s for s, p in SHAPE_PLURALS.items()}}
_SHAPES_RE = re.compile(rf"\b({'|'.join(sorted(_SHAPE_WORD, key=len, reverse=True))})\b")
_THING = rf"({'|'.join(COLOUR_NAMES)})\s+({'|'.join(SHAPES)})"
_RELATION_RE = re.compile(
    rf"{_THING}\s+(to the left of|to the right of|left of|right of|above|below)\s+"
    rf"(?:an?\s+|the\s+)?{_THING}"
)
_HOLDS = {
    "left of": lambda a, b: a[1] < b[1],
    "right of": lambda a, b: a[1] > b[1],
    "above": lambda a, b: a[0] < b[0],
    "below": lambda a, b: a[0] > b[0],
}


def stated_facts(text: str) -> set[Fact]:
    """The parser's facts of `text`, plus ("shape", shape) for each shape named without a
    colour and ("relation", colour, shape, relation, colour, shape) for each relation."""
    facts = parse_caption(text)
    lower = text.lower().replace("-", " ")
    coloured = {f[2] for f in facts if f[0] == "object"}
    facts |= {("shape", _SHAPE_WORD[w]) for w in _SHAPES_RE.findall(lower)} - {
        ("shape", s) for s in coloured
    }
    for ca, a, words, cb, b in _RELATION_RE.findall(lower):
        facts.add(("relation", ca, a, words.removeprefix("to the "), cb, b))
    return facts


def _relation(fact: Fact, rewritten: set[Fact]) -> bool | None:
    """Whether the rewrite's positions make a relation hold: True, False (the shapes are
    placed, never that way), None (one of them is not placed)."""
    _, ca, a, relation, cb, b = fact
    cells = [
        [POSITIONS[f[3]] for f in rewritten if f[0] == "position" and f[1:3] == thing]
        for thing in ((ca, a), (cb, b))
    ]
    if not all(cells):
        return None
    return any(_HOLDS[relation](p, q) for p in cells[0] for q in cells[1])


def _kept(fact: Fact, rewritten: set[Fact]) -> bool:
    if fact[0] == "relation":
        return bool(_relation(fact, rewritten))
    if fact[0] == "shape":
        return any(f[0] in ("shape", "object") and f[-1] == fact[1] for f in rewritten)
    return fact in rewritten


def _by_kind(facts: set[Fact]) -> dict[tuple, set]:
    """What each fact says, keyed by what it is about."""
    out: dict[tuple, set] = defaultdict(set)
    for fact in facts:
        kind = fact[0]
        if kind in ("count", "position"):
            out[(kind, fact[1], fact[2])].add(fact[3])
        elif kind in ("background", "text"):
            out[(kind,)].add(fact[1])
    return out


def contradictions(short: set[Fact], upsampled: set[Fact]) -> set[tuple]:
    """The subjects (count/position of a coloured shape, background, text) on which
    `upsampled` states only values that `short` does not."""
    said, rewritten = _by_kind(short), _by_kind(upsampled)
    out = {
        about for about, values in said.items() if rewritten.get(about, values) & values == set()
    }
    return out | {f for f in short if f[0] == "relation" and _relation(f, upsampled) is False}


def faithfulness(shorts: Sequence[str], upsampled: Sequence[str]) -> dict[str, Any]:
    """Fact-level faithfulness of each rewrite to its short text.

    Returns:
        kept: facts of the short texts stated by their rewrites, over all of them;
        contradicted: share of rewrites that contradict their short text;
        all_kept: share of rewrites that keep every fact; mean word counts of both.
    """
    if len(shorts) != len(upsampled):
        raise ValueError(f"{len(shorts)} short texts but {len(upsampled)} rewrites")
    stated = kept = whole = contradicted = 0
    for short, long in zip(shorts, upsampled, strict=True):
        facts, rewritten = stated_facts(short), stated_facts(long)
        held = sum(_kept(f, rewritten) for f in facts)
        stated += len(facts)
        kept += held
        whole += held == len(facts)
        contradicted += bool(contradictions(facts, rewritten))
    n = max(len(shorts), 1)
    return {
        "prompts": len(shorts),
        "facts_stated": stated,
        "kept": round(kept / stated, 4) if stated else None,
        "all_kept": round(whole / n, 4),
        "contradicted": round(contradicted / n, 4),
        "mean_words_short": round(sum(len(s.split()) for s in shorts) / n, 2),
        "mean_words_upsampled": round(sum(len(u.split()) for u in upsampled) / n, 2),
    }

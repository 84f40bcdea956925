"""Read facts back out of a caption, and list the facts true of a scene.

Facts are tuples, so a caption's precision and recall against its scene are set
arithmetic:

    ("object", colour, shape)            a colour+shape is present
    ("count", colour, shape, n)          exactly n of them (n >= 2 only)
    ("position", colour, shape, name)    one of them is at grid position `name`
    ("background", name)
    ("text", glyph)

Counts of one are not facts: "a red circle" is true whether there are one or
two, so neither side states them. The parser is deliberately simple: a regex
scan that attaches each position phrase to the nearest object mention in the
same clause (clauses end at . , ; : ! ?). A clause without any mention
("... : a large one in the center and small ones at the top") refers back to
the last mention before it.
"""

from __future__ import annotations

import re

from .phrases import group_count
from .scene import Scene
from .vocab import BACKGROUNDS, COLOUR_NAMES, NUMBER_WORDS, SHAPES

Fact = tuple

_WORD_TO_NUMBER = {w: n for n, w in NUMBER_WORDS.items() if n > 1}
_POSITION_ALIASES = {"upper": "top", "lower": "bottom", "middle": "center", "centre": "center"}
_BACKGROUND_ALIASES = {"grey": "gray", "checked": "checkered", "stripy": "striped"}


def _alt(words: object) -> str:
    return "|".join(sorted(words, key=len, reverse=True))  # longest first


_BG_WORDS = _alt([*BACKGROUNDS, *_BACKGROUND_ALIASES])
_SIDE = "top|upper|bottom|lower"
_PATTERN = re.compile(
    rf"""
    (?P<rel>\b(?:to\ the\ )?(?:left|right)\ of\b|\babove\b|\bbelow\b)
  | (?P<bg>\b(?:(?P<bg1>{_BG_WORDS})\ background|background\ is\ (?:an?\ )?(?P<bg2>{_BG_WORDS}))\b)
  | (?P<text>\b(?:letter|digit|number|character)\s+"?(?P<glyph>[a-z0-9])"?(?![a-z0-9]))
  | (?P<obj>\b(?:(?P<num>{_alt(_WORD_TO_NUMBER)})\s+)?(?:(?:small|large|big|tiny)\s+)?
        (?P<colour>{_alt(COLOUR_NAMES)})\s+(?P<shape>{_alt(SHAPES)})(?:es|s)?\b)
  | (?P<pos>\b(?:(?:{_SIDE})\s+(?:left|right)|top|upper|bottom|lower|left|right|center|centre
        |middle)\b)
  | (?P<brk>[.,;:!?])
    """,
    re.VERBOSE,
)


def _normalise_position(phrase: str) -> str:
    words = [_POSITION_ALIASES.get(w, w) for w in phrase.split()]
    return " ".join(words)


class _Reader:
    """State of one left-to-right scan; see the module docstring for the rules."""

    def __init__(self) -> None:
        self.facts: set[Fact] = set()
        self.previous: tuple[str, str] | None = None  # last mention of earlier clauses
        self.current: tuple[str, str] | None = None  # last mention in this clause
        self.has_mention = False
        self.pending: list[str] = []  # positions seen before this clause's first mention

    def place(self, target: tuple[str, str] | None, positions: list[str]) -> None:
        if target is not None:  # None: a background or glyph mention, positions dropped
            self.facts.update(("position", *target, p) for p in positions)

    def mention(self, target: tuple[str, str] | None) -> None:
        if not self.has_mention:
            self.place(target, self.pending)  # "In the center there is a red circle"
            self.pending = []
        self.current, self.has_mention = target, True

    def position(self, name: str) -> None:
        if self.has_mention:
            self.place(self.current, [name])
        else:
            self.pending.append(name)

    def end_clause(self) -> None:
        if self.has_mention:
            self.previous = self.current
        else:
            self.place(self.previous, self.pending)  # anaphora: "... and small ones at ..."
        self.pending, self.current, self.has_mention = [], None, False


def parse_caption(text: str) -> set[Fact]:
    """Facts stated by `text`, in the world's vocabulary (see module docstring)."""
    reader = _Reader()
    for m in _PATTERN.finditer(text.lower().replace("-", " ")):
        if m.group("obj"):
            key = (m.group("colour"), m.group("shape"))
            reader.facts.add(("object", *key))
            if m.group("num"):
                reader.facts.add(("count", *key, _WORD_TO_NUMBER[m.group("num")]))
            reader.mention(key)
        elif m.group("bg"):
            name = m.group("bg1") or m.group("bg2")
            reader.facts.add(("background", _BACKGROUND_ALIASES.get(name, name)))
            reader.mention(None)
        elif m.group("text"):
            reader.facts.add(("text", m.group("glyph").upper()))
            reader.mention(None)
        elif m.group("pos"):
            reader.position(_normalise_position(m.group("pos")))
        elif m.group("brk"):
            reader.end_clause()
        # "rel" (relations like "left of") is consumed so it is not read as a position.
    reader.end_clause()
    return reader.facts


def scene_facts(scene: Scene) -> set[Fact]:
    """Every fact of the kinds `parse_caption` reads that is true of `scene`."""
    facts: set[Fact] = {("background", scene.background)}
    for obj in scene.objects:
        facts.add(("object", obj.colour, obj.shape))
        facts.add(("position", obj.colour, obj.shape, obj.position))
        n = group_count(scene, obj.colour, obj.shape)
        if n > 1:
            facts.add(("count", obj.colour, obj.shape, n))
    if scene.text is not None:
        facts.add(("text", scene.text.glyph))
    return facts

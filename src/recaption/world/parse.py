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

`parse_spans` gives each fact with the stretch of text that states it (the
object mention for object and count facts, the position phrase for a position),
so a caption page can mark exactly the words that are wrong.
"""

from __future__ import annotations

import re

from .phrases import group_count
from .scene import Scene
from .vocab import (
    BACKGROUNDS,
    COLOUR_NAMES,
    NUMBER_WORDS,
    SHAPE_PLURALS,
    SHAPES,
    alternation,
    glyph_kind,
)

Fact = tuple
Span = tuple[int, int, Fact]  # text[start:end] states the fact
_Position = tuple[str, int, int]  # grid position name, start, end of its phrase

_WORD_TO_NUMBER = {w: n for n, w in NUMBER_WORDS.items() if n > 1}
_POSITION_ALIASES = {"upper": "top", "lower": "bottom", "middle": "center", "centre": "center"}
_BACKGROUND_ALIASES = {"grey": "gray", "checked": "checkered", "stripy": "striped"}


_BG_WORDS = alternation([*BACKGROUNDS, *_BACKGROUND_ALIASES])
_SIDE = "top|upper|bottom|lower"
_PATTERN = re.compile(
    rf"""
    (?P<rel>\b(?:to\ the\ )?(?:left|right)\ of\b|\babove\b|\bbelow\b)
  | (?P<bg>\b(?:(?P<bg1>{_BG_WORDS})\ background|background\ is\ (?:an?\ )?(?P<bg2>{_BG_WORDS}))\b)
  | (?P<text>\b(?:letter|digit|number|character)\s+"?(?P<glyph>[a-z0-9])"?(?![a-z0-9]))
  | (?P<obj>\b(?:(?P<num>{alternation(_WORD_TO_NUMBER)})\s+)?(?:(?:small|large|big|tiny)\s+)?
        (?P<colour>{alternation(COLOUR_NAMES)})\s+(?P<shape>{alternation(SHAPES)})(?:es|s)?\b)
  | (?P<pos>\b(?:(?:{_SIDE})\s+(?:left|right)|top|upper|bottom|lower|left|right|center|centre
        |middle)\b)
  | (?P<brk>[.,;:!?])
    """,
    re.VERBOSE,
)


def _normalise_position(phrase: str) -> str:
    words = [_POSITION_ALIASES.get(w, w) for w in phrase.split()]
    return " ".join(words)


def _normalise_text(text: str) -> str:
    """Lowercase, hyphens as spaces, one character for one so spans index `text`."""
    lowered = text.lower()
    if len(lowered) != len(text):  # "\u0130".lower() is two characters
        lowered = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
    return lowered.replace("-", " ")


class _Reader:
    """State of one left-to-right scan; see the module docstring for the rules."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.previous: tuple[str, str] | None = None  # last mention of earlier clauses
        self.current: tuple[str, str] | None = None  # last mention in this clause
        self.has_mention = False
        self.pending: list[_Position] = []  # positions seen before this clause's first mention

    def state(self, span: tuple[int, int], fact: Fact) -> None:
        self.spans.append((*span, fact))

    def place(self, target: tuple[str, str] | None, positions: list[_Position]) -> None:
        if target is not None:  # None: a background or glyph mention, positions dropped
            for name, start, end in positions:
                self.state((start, end), ("position", *target, name))

    def mention(self, target: tuple[str, str] | None) -> None:
        if not self.has_mention:
            self.place(target, self.pending)  # "In the center there is a red circle"
            self.pending = []
        self.current, self.has_mention = target, True

    def position(self, position: _Position) -> None:
        if self.has_mention:
            self.place(self.current, [position])
        else:
            self.pending.append(position)

    def end_clause(self) -> None:
        if self.has_mention:
            self.previous = self.current
        else:
            self.place(self.previous, self.pending)  # anaphora: "... and small ones at ..."
        self.pending, self.current, self.has_mention = [], None, False


def _read(reader: _Reader, m: re.Match[str]) -> None:
    """Feed one match of `_PATTERN` to `reader`."""
    if m.group("obj"):
        key = (m.group("colour"), m.group("shape"))
        reader.state(m.span("obj"), ("object", *key))
        if m.group("num"):
            reader.state(m.span("obj"), ("count", *key, _WORD_TO_NUMBER[m.group("num")]))
        reader.mention(key)
    elif m.group("bg"):
        name = m.group("bg1") or m.group("bg2")
        reader.state(m.span("bg"), ("background", _BACKGROUND_ALIASES.get(name, name)))
        reader.mention(None)
    elif m.group("text"):
        reader.state(m.span("text"), ("text", m.group("glyph").upper()))
        reader.mention(None)
    elif m.group("pos"):
        reader.position((_normalise_position(m.group("pos")), *m.span("pos")))
    elif m.group("brk"):
        reader.end_clause()
    # "rel" (relations like "left of") is consumed so it is not read as a position.


def parse_spans(text: str) -> list[Span]:
    """Each fact `text` states, with where: (start, end, fact), sorted by position.

    `text[start:end]` is the phrase that states the fact. A fact stated twice has
    two spans; "three blue squares" gives its object and count facts the same span.
    Spans never overlap unless they are equal.
    """
    reader = _Reader()
    for m in _PATTERN.finditer(_normalise_text(text)):
        _read(reader, m)
    reader.end_clause()
    return sorted(reader.spans, key=lambda span: span[:2])  # stable: object before count


def parse_caption(text: str) -> set[Fact]:
    """Facts stated by `text`, in the world's vocabulary (see module docstring)."""
    return {fact for _, _, fact in parse_spans(text)}


def fact_phrase(fact: Fact) -> str:
    """A fact as a short phrase: 'blue star', '2 red circles', 'red circle at top left',
    'background gray', 'letter "K"'."""
    match fact:
        case ("object", colour, shape):
            return f"{colour} {shape}"
        case ("count", colour, shape, n):
            return f"{n} {colour} {SHAPE_PLURALS[shape]}"
        case ("position", colour, shape, name):
            return f"{colour} {shape} at {name}"
        case ("background", name):
            return f"background {name}"
        case ("text", glyph):
            return f'{glyph_kind(glyph)} "{glyph}"'
    raise ValueError(f"not a fact: {fact!r}")


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

"""The closed vocabulary of the synthetic world.

Every name a caption can use is defined here, so captions, the parser and the
prompt suite can never drift apart. Colours are saturated RGB triples chosen to
stay distinct after downsampling to 32 px; background names never reuse an
object colour name, so "a red ..." is always about an object.
"""

from __future__ import annotations

import string

RGB = tuple[int, int, int]

# Shapes are chosen to stay distinguishable at ~9 px (a large object at 32 px).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star")

# Plural forms, spelled out because "cross" takes "-es".
SHAPE_PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
    "star": "stars",
}

COLOURS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (255, 220, 0),
    "green": (30, 170, 50),
    "cyan": (0, 200, 220),
    "blue": (30, 60, 220),
    "purple": (140, 40, 190),
    "pink": (255, 105, 180),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

SIZES: tuple[str, ...] = ("small", "large")
# Object extent as a fraction of its grid cell; large objects leave a small margin
# so neighbours never touch.
SIZE_SCALE: dict[str, float] = {"small": 0.55, "large": 0.9}

# 3x3 grid, reading order: name -> (row, col).
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (0, 1),
    "top right": (0, 2),
    "left": (1, 0),
    "center": (1, 1),
    "right": (1, 2),
    "bottom left": (2, 0),
    "bottom": (2, 1),
    "bottom right": (2, 2),
}
POSITION_NAMES: tuple[str, ...] = tuple(POSITIONS)
CELL_TO_POSITION: dict[tuple[int, int], str] = {rc: name for name, rc in POSITIONS.items()}

SOLID_BACKGROUNDS: dict[str, RGB] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (110, 110, 110),
    "beige": (225, 210, 170),
}
# Patterns are two light greys so every object colour stays visible on them.
PATTERN_BACKGROUNDS: dict[str, tuple[RGB, RGB]] = {
    "striped": ((240, 240, 240), (185, 185, 185)),
    "checkered": ((240, 240, 240), (185, 185, 185)),
}
BACKGROUNDS: tuple[str, ...] = tuple(SOLID_BACKGROUNDS) + tuple(PATTERN_BACKGROUNDS)

LETTERS: str = string.ascii_uppercase
DIGITS: str = string.digits

# Glyph ink is picked for contrast with the background, never at random.
TEXT_COLOURS: dict[str, RGB] = {"black": (0, 0, 0), "white": (255, 255, 255)}
DARK_BACKGROUNDS: frozenset[str] = frozenset({"black", "gray"})

NUMBER_WORDS: dict[int, str] = {
    1: "one",
    2: "two",
    3: "three",
    4: "four",
    5: "five",
    6: "six",
    7: "seven",
    8: "eight",
    9: "nine",
}


def alternation(words: object) -> str:
    """A regex alternation of `words`, longest first, so "stars" wins over "star"."""
    return "|".join(sorted(words, key=len, reverse=True))


def text_colour_for(background: str) -> str:
    """Name of the glyph ink that contrasts with `background`."""
    return "white" if background in DARK_BACKGROUNDS else "black"


def glyph_kind(glyph: str) -> str:
    """'digit' for 0-9, 'letter' otherwise."""
    return "digit" if glyph in DIGITS else "letter"

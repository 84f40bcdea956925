"""Scenes: the ground truth behind every image and caption.

A scene is a background, 1..n objects in distinct cells of a 3x3 grid, and
optionally one glyph in a free cell. Exactly one object is the main subject;
with several objects it is the only large one, so "the main subject" is also
what a viewer notices first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .config import WorldConfig
from .vocab import (
    BACKGROUNDS,
    COLOUR_NAMES,
    DIGITS,
    LETTERS,
    POSITIONS,
    SHAPES,
    SIZES,
    TEXT_COLOURS,
    glyph_kind,
    text_colour_for,
)

# Reading order; sampling indexes into this so the draw order is fixed.
POSITION_LIST: tuple[str, ...] = tuple(POSITIONS)
# Jitter bounds: small enough that an object never looks like it sits in another cell.
MAX_OFFSET = 0.08
MAX_SCALE_JITTER = 0.06


def pick(rng: np.random.Generator, options: Any) -> Any:
    """Uniform choice from a sequence, returning the element itself (not a numpy scalar)."""
    return options[int(rng.integers(len(options)))]


def _check_position(position: str, d: dict[str, Any]) -> None:
    if position not in POSITIONS:
        raise ValueError(f"unknown position {position!r}; allowed: {list(POSITIONS)}")
    row, col = POSITIONS[position]
    if d.get("row", row) != row or d.get("col", col) != col:
        raise ValueError(f"row/col {d.get('row')}/{d.get('col')} disagree with {position!r}")


@dataclass(frozen=True)
class SceneObject:
    """One coloured shape in one grid cell."""

    shape: str
    colour: str
    size: str
    position: str
    # Small jitter inside the cell: (dx, dy) as fractions of a cell, and a size factor.
    # Real pictures never repeat exactly; without it, one-object scenes would often be
    # pixel-identical and ingest would rightly reject them as duplicate images.
    offset: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0

    def __post_init__(self) -> None:
        if (
            max(map(abs, self.offset)) > MAX_OFFSET + 1e-9
            or abs(self.scale - 1) > MAX_SCALE_JITTER + 1e-9
        ):
            raise ValueError(f"object jitter offset={self.offset} scale={self.scale} out of range")
        for name, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("colour", self.colour, COLOUR_NAMES),
            ("size", self.size, SIZES),
            ("position", self.position, tuple(POSITIONS)),
        ):
            if value not in allowed:
                raise ValueError(f"object {name} {value!r} not in {list(allowed)}")

    @property
    def cell(self) -> tuple[int, int]:
        """(row, col) on the 3x3 grid."""
        return POSITIONS[self.position]

    def to_dict(self) -> dict[str, Any]:
        row, col = self.cell
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "position": self.position,
            "row": row,
            "col": col,
            "offset": list(self.offset),
            "scale": self.scale,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneObject:
        _check_position(d["position"], d)
        offset = tuple(d.get("offset", (0.0, 0.0)))
        return cls(d["shape"], d["colour"], d["size"], d["position"], offset, d.get("scale", 1.0))


@dataclass(frozen=True)
class SceneText:
    """A single letter or digit drawn in a cell, in an ink that contrasts with the background."""

    glyph: str
    position: str
    colour: str

    def __post_init__(self) -> None:
        if len(self.glyph) != 1 or self.glyph not in LETTERS + DIGITS:
            raise ValueError(f"glyph must be one uppercase letter or digit, got {self.glyph!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"text position {self.position!r} not in {list(POSITIONS)}")
        if self.colour not in TEXT_COLOURS:
            raise ValueError(f"text colour {self.colour!r} not in {list(TEXT_COLOURS)}")

    @property
    def kind(self) -> str:
        """'letter' or 'digit'."""
        return glyph_kind(self.glyph)

    @property
    def cell(self) -> tuple[int, int]:
        return POSITIONS[self.position]

    def to_dict(self) -> dict[str, Any]:
        row, col = self.cell
        return {
            "glyph": self.glyph,
            "kind": self.kind,
            "position": self.position,
            "row": row,
            "col": col,
            "colour": self.colour,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneText:
        _check_position(d["position"], d)
        return cls(d["glyph"], d["position"], d["colour"])


@dataclass(frozen=True)
class Scene:
    """Background, objects in reading order, index of the main object, optional glyph."""

    background: str
    objects: tuple[SceneObject, ...]
    main: int
    text: SceneText | None = None

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background {self.background!r} not in {list(BACKGROUNDS)}")
        if not self.objects:
            raise ValueError("a scene needs at least one object")
        if not 0 <= self.main < len(self.objects):
            raise ValueError(f"main index {self.main} out of range for {len(self.objects)} objects")
        cells = [o.cell for o in self.objects] + ([self.text.cell] if self.text else [])
        if len(set(cells)) != len(cells):
            raise ValueError(f"objects and text must occupy distinct cells, got {cells}")

    @property
    def main_object(self) -> SceneObject:
        return self.objects[self.main]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (plain str/int/list/dict/None)."""
        return {
            "background": self.background,
            "objects": [o.to_dict() for o in self.objects],
            "main": self.main,
            "text": self.text.to_dict() if self.text else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        text = SceneText.from_dict(d["text"]) if d.get("text") else None
        objects = tuple(SceneObject.from_dict(o) for o in d["objects"])
        return cls(d["background"], objects, int(d["main"]), text)


def _sample_objects(rng: np.random.Generator, cfg: WorldConfig) -> tuple[list[SceneObject], int]:
    """Objects sorted in reading order, and the index of the main one."""
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    cells = [POSITION_LIST[int(i)] for i in rng.permutation(len(POSITION_LIST))[:n]]
    shape, colour = pick(rng, SHAPES), pick(rng, COLOUR_NAMES)
    # Salience: alone the main object may be either size; in company it is the only large one.
    main_size = pick(rng, SIZES) if n == 1 else "large"
    main = SceneObject(shape, colour, main_size, cells[0])
    # Counting: some extras repeat the main shape and colour ("three blue squares").
    repeats = int(rng.integers(1, n)) if n > 1 and rng.random() < cfg.repeat_probability else 0
    extras = []
    for i, cell in enumerate(cells[1:]):
        if i < repeats:
            extras.append(SceneObject(shape, colour, "small", cell))
        else:
            extras.append(SceneObject(pick(rng, SHAPES), pick(rng, COLOUR_NAMES), "small", cell))
    objects = sorted([main, *extras], key=lambda o: o.cell)
    return objects, objects.index(main)


def sample_scene(rng: np.random.Generator, cfg: WorldConfig) -> Scene:
    """Draw one scene; all randomness comes from `rng`, in a fixed order."""
    background = pick(rng, BACKGROUNDS)
    objects, main = _sample_objects(rng, cfg)
    text = None
    taken = {o.position for o in objects}
    free = [p for p in POSITION_LIST if p not in taken]
    if free and rng.random() < cfg.text_probability:
        glyph = pick(rng, LETTERS) if rng.random() < 0.5 else pick(rng, DIGITS)
        text = SceneText(glyph, pick(rng, free), text_colour_for(background))
    return Scene(background, _jitter(rng, objects), main, text)


def _jitter(rng: np.random.Generator, objects: list[SceneObject]) -> tuple[SceneObject, ...]:
    """Nudge each object inside its cell (drawn last, so the rest of the stream is unchanged)."""
    out = []
    for obj in objects:
        dx, dy = (round(float(v), 3) for v in rng.uniform(-MAX_OFFSET, MAX_OFFSET, size=2))
        scale = round(float(rng.uniform(1 - MAX_SCALE_JITTER, 1 + MAX_SCALE_JITTER)), 3)
        out.append(replace(obj, offset=(dx, dy), scale=scale))
    return tuple(out)

"""Draw a scene to a small RGB image.

Shapes are drawn at SUPERSAMPLE x the target size and box-downsampled, which
gives anti-aliased edges without any randomness: the same scene always gives
the same bytes. Backgrounds and fonts are cached because at 32 px they would
otherwise dominate the ~0.2 ms a render takes.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .scene import Scene, SceneObject, SceneText
from .vocab import COLOURS, PATTERN_BACKGROUNDS, SIZE_SCALE, SOLID_BACKGROUNDS, TEXT_COLOURS

SUPERSAMPLE = 4
# Pattern period as a fraction of the image side: 8 stripes/checks across.
PATTERN_TILES = 8
# Font size as a fraction of the cell (capitals are ~0.7 of the font size), and
# stroke width as a fraction of the cell so glyphs survive downsampling.
GLYPH_SCALE = 1.0
GLYPH_STROKE = 0.035


@functools.lru_cache(maxsize=64)
def _background(name: str, side: int) -> Image.Image:
    """Background at supersampled size `side`; callers must copy() before drawing."""
    if name in SOLID_BACKGROUNDS:
        return Image.new("RGB", (side, side), SOLID_BACKGROUNDS[name])
    light, dark = PATTERN_BACKGROUNDS[name]
    tile = max(1, side // PATTERN_TILES)
    y, x = np.mgrid[0:side, 0:side]  # (side, side) each
    diagonal, checks = (x + y) // tile, x // tile + y // tile
    mask = (diagonal if name == "striped" else checks) % 2 == 1
    pixels = np.where(mask[..., None], np.array(dark), np.array(light)).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")  # (side, side, 3)


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled default font: no font files to ship or find.
    return ImageFont.load_default(size=size)


# Unit 5-pointed star, point up, as (dx, dy) in [-1, 1]; inner radius kept fat so
# the star stays a star, not a blob, after downsampling.
_STAR = tuple(
    (
        (1.0 if k % 2 == 0 else 0.45) * math.sin(k * math.pi / 5),
        -(1.0 if k % 2 == 0 else 0.45) * math.cos(k * math.pi / 5),
    )
    for k in range(10)
)


def _cell_centre(cell: tuple[int, int], side: int) -> tuple[float, float, float]:
    """(cx, cy, cell_side) in supersampled pixels."""
    row, col = cell
    step = side / 3
    return (col + 0.5) * step, (row + 0.5) * step, step


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, side: int) -> None:
    cx, cy, step = _cell_centre(obj.cell, side)
    cx, cy = cx + obj.offset[0] * step, cy + obj.offset[1] * step
    h = SIZE_SCALE[obj.size] * obj.scale * step / 2  # half extent
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif obj.shape == "square":
        s = 0.85 * h  # a full-cell square looks much heavier than the other shapes
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - h), (cx + h, cy + 0.8 * h), (cx - h, cy + 0.8 * h)], fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)], fill=fill)
    elif obj.shape == "cross":
        a = 0.36 * h  # half arm width
        draw.rectangle((cx - h, cy - a, cx + h, cy + a), fill=fill)
        draw.rectangle((cx - a, cy - h, cx + a, cy + h), fill=fill)
    elif obj.shape == "star":
        draw.polygon([(cx + h * dx, cy + h * dy) for dx, dy in _STAR], fill=fill)
    else:  # unreachable: SceneObject validates shapes
        raise ValueError(f"unknown shape {obj.shape!r}")


@functools.lru_cache(maxsize=1024)
def _glyph_offset(glyph: str, size: int, stroke: int) -> tuple[float, float]:
    """Offset from the cell centre to the top-left anchor that centres the glyph's ink.

    Anchor "mm" centres the font's line box, not the ink, which puts capitals
    visibly low in the cell.
    """
    left, top, right, bottom = _font(size).getbbox(glyph, anchor="lt", stroke_width=stroke)
    return -(left + right) / 2, -(top + bottom) / 2


def _draw_text(draw: ImageDraw.ImageDraw, text: SceneText, side: int) -> None:
    cx, cy, step = _cell_centre(text.cell, side)
    size, stroke = max(4, round(GLYPH_SCALE * step)), round(GLYPH_STROKE * step)
    dx, dy = _glyph_offset(text.glyph, size, stroke)
    ink = TEXT_COLOURS[text.colour]
    draw.text(
        (cx + dx, cy + dy),
        text.glyph,
        fill=ink,
        font=_font(size),
        anchor="lt",
        stroke_width=stroke,
        stroke_fill=ink,
    )


def render(scene: Scene, image_size: int) -> Image.Image:
    """Render `scene` as an RGB image of `image_size` x `image_size` pixels."""
    side = image_size * SUPERSAMPLE
    image = _background(scene.background, side).copy()
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, side)
    if scene.text is not None:
        _draw_text(draw, scene.text, side)
    # reduce() is an exact box filter: cheap, deterministic anti-aliasing.
    return image.reduce(SUPERSAMPLE)

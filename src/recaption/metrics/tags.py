"""Classification tags read from a descriptive caption, and their accuracy against scenes.

A tag row says, for one image: the main subject (`main_shape`, and `main_colour`
where the caption gives it), the `background`, the object `colours` present,
whether text is present (`has_text`) and which glyph (`text`). They are read from
the captioner's descriptive caption with the world's parser, so they cost no model
of their own. The main subject is the first object the caption mentions: the
descriptive captions the captioner learns from name the main subject's group first.

The parser knows the world's vocabulary only; on real captions most tags stay null
("a dog on a beach" states no shape), which the coverage figures show.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pyarrow as pa

from recaption.world import COLOUR_NAMES, SHAPES, Scene, parse_spans
from recaption.world.vocab import alternation

TAG_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("main_shape", pa.string()),
        ("main_colour", pa.string()),
        ("background", pa.string()),
        ("colours", pa.list_(pa.string())),
        ("has_text", pa.bool_()),
        ("text", pa.string()),
    ]
)
TAGS: tuple[str, ...] = tuple(TAG_SCHEMA.names[1:])

_SHAPE = re.compile(rf"\b({alternation(SHAPES)})(?:es|s)?\b")
_COLOUR = re.compile(rf"\b({alternation(COLOUR_NAMES)})\b")
# Words that say text is there even when no glyph could be read after them.
_TEXT_WORD = re.compile(r"\b(?:text|letters?|digits?|written|writing|words?)\b")


def _colours(names: set[str]) -> list[str]:
    """`names` in the vocabulary's order, so equal sets give equal lists."""
    return [c for c in COLOUR_NAMES if c in names]


def caption_tags(text: str) -> dict[str, object]:
    """The tags one caption states; a tag it does not state is None (colours: [])."""
    facts = [fact for _, _, fact in parse_spans(text)]
    objects = [f for f in facts if f[0] == "object"]
    lowered = text.lower()
    if objects:
        _, colour, shape = objects[0]
    else:  # a shape named without a colour: "a circle" still has a main subject
        found = _SHAPE.search(lowered)
        colour, shape = None, found and found.group(1)
    glyph = next((f[1] for f in facts if f[0] == "text"), None)
    return {
        "main_shape": shape,
        "main_colour": colour,
        "background": next((f[1] for f in facts if f[0] == "background"), None),
        # Colour words anywhere: background and glyph-ink names are never object colours.
        "colours": _colours(set(_COLOUR.findall(lowered))),
        "has_text": glyph is not None or _TEXT_WORD.search(lowered) is not None,
        "text": glyph,
    }


def scene_tags(scene: Scene) -> dict[str, object]:
    """The tags that are true of `scene`, in the form `caption_tags` returns."""
    main = scene.main_object
    return {
        "main_shape": main.shape,
        "main_colour": main.colour,
        "background": scene.background,
        "colours": _colours({o.colour for o in scene.objects}),
        "has_text": scene.text is not None,
        "text": scene.text.glyph if scene.text else None,
    }


def tags_table(keys: Sequence[str], captions: Sequence[str]) -> pa.Table:
    """One tag row per (key, caption), sorted by key, typed by TAG_SCHEMA."""
    rows = [{"key": k, **caption_tags(c)} for k, c in sorted(zip(keys, captions, strict=True))]
    return pa.Table.from_pylist(rows, schema=TAG_SCHEMA)


def tag_accuracy(tags: Sequence[dict], scenes: Sequence[Scene]) -> dict[str, float]:
    """Per tag, the share of images whose tag equals the scene's (an unstated tag is
    wrong unless the scene has none either: no text, say); `main_subject` needs both
    shape and colour right, `colours` the exact set."""
    if len(tags) != len(scenes) or not tags:
        raise ValueError(f"need as many tag rows as scenes, and some: {len(tags)}, {len(scenes)}")
    truths = [scene_tags(s) for s in scenes]
    hits = {tag: 0 for tag in (*TAGS, "main_subject")}
    for said, true in zip(tags, truths, strict=True):
        for tag in TAGS:
            hits[tag] += said[tag] == true[tag]
        hits["main_subject"] += all(said[t] == true[t] for t in ("main_shape", "main_colour"))
    return {tag: n / len(tags) for tag, n in hits.items()}


def tag_coverage(tags: Sequence[dict]) -> dict[str, float]:
    """Per tag, the share of images whose caption states it (for `has_text`: says that
    text is there). What real data, with no scenes to check against, can report."""
    if not tags:
        raise ValueError("no tag rows: coverage of nothing is undefined")
    return {tag: sum(bool(row[tag]) for row in tags) / len(tags) for tag in TAGS}

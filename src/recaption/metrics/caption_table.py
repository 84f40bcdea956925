"""A caption figure as one standalone HTML page: thumbnail, then each caption kind.

The page has no external assets (images are base64 data URIs, CSS is inline), so
it can be attached to a report or opened from an artifact store as is. Every
piece of text is HTML-escaped: captions come from scraped and generated data.

Where the scene of an image is known (the synthetic world), `caption_marks`
checks each caption against it: the words that state a false fact are struck
through in red, and the scene's facts the caption leaves out are listed under it.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from recaption import images as imaging
from recaption.world import Fact, Scene, fact_phrase, parse_spans, scene_facts

THUMBNAIL_PX = 128
WRONG_NOTE = "not in the image: "
LEGEND = (
    '<p class="legend"><del class="wrong">struck through</del>: stated, but not true of '
    'the image. <span class="missed">missed:</span> true of the image, not stated.</p>'
)
_FACT_ORDER = ("object", "count", "position", "background", "text")  # missed facts, in this order

# Images are 16-32 px: `pixelated` keeps them crisp at 128 px instead of blurring.
CSS = f"""
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
h1 {{ font-size: 1.3em; }}
table {{ border-collapse: collapse; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 6px 10px; vertical-align: top;
  text-align: left; }}
table.summary td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
table.captions {{ margin-top: 1.5em; }}
table.captions td {{ max-width: 28em; }}
img {{ width: {THUMBNAIL_PX}px; height: {THUMBNAIL_PX}px; image-rendering: pixelated; }}
.kind {{ display: block; font-size: 0.75em; color: #777; text-transform: uppercase;
  letter-spacing: 0.04em; margin-bottom: 2px; }}
.label {{ display: block; font-size: 0.75em; color: #777; }}
del.wrong {{ color: #c00; text-decoration: line-through; text-decoration-color: #c00; }}
.missed {{ display: block; font-size: 0.8em; color: #965; margin-top: 4px; }}
.legend {{ font-size: 0.9em; color: #555; }}
"""


@dataclass(frozen=True)
class CaptionMarks:
    """What one caption gets wrong against its scene.

    wrong: (start, end, note) per span of the caption that states a false fact, in
        reading order and not overlapping; note names the false facts.
    missed: the scene's facts the caption does not state, as short phrases.
    """

    wrong: tuple[tuple[int, int, str], ...] = ()
    missed: tuple[str, ...] = ()


def _fact_order(fact: Fact) -> tuple:
    return (_FACT_ORDER.index(fact[0]), fact[1:])


def caption_marks(text: str, scene: Scene) -> CaptionMarks:
    """Check `text` against `scene`: its false spans and the facts it misses."""
    truth = scene_facts(scene)
    spans = parse_spans(text)
    false_at: dict[tuple[int, int], list[str]] = {}  # in reading order: spans are sorted
    for start, end, fact in spans:
        if fact not in truth:
            false_at.setdefault((start, end), []).append(fact_phrase(fact))
    wrong = tuple((s, e, WRONG_NOTE + "; ".join(p)) for (s, e), p in false_at.items())
    missed = sorted(truth - {fact for _, _, fact in spans}, key=_fact_order)
    return CaptionMarks(wrong, tuple(fact_phrase(f) for f in missed))


def marked_text(text: str, wrong: Sequence[tuple[int, int, str]]) -> str:
    """`text` as HTML, each wrong span struck through with its note as a tooltip.

    The pieces are escaped one by one, so a span's markup is never escaped and a
    caption's own `<`, `&` or quotes never become markup.
    """
    parts, at = [], 0
    for start, end, note in wrong:
        parts.append(escape(text[at:start]))
        parts.append(f'<del class="wrong" title="{escape(note)}">{escape(text[start:end])}</del>')
        at = end
    parts.append(escape(text[at:]))
    return "".join(parts)


def _format(value: Any) -> str:
    """A metric value as table text: floats to 3 decimals, None as a dash."""
    if value is None:
        return "\u2013"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def summary_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """Caption kinds as rows, metrics (in order of first appearance) as columns."""
    metrics = list(dict.fromkeys(m for figures in summary.values() for m in figures))
    head = "".join(f"<th>{escape(m)}</th>" for m in metrics)
    rows = []
    for kind, figures in summary.items():
        cells = "".join(f'<td class="num">{escape(_format(figures.get(m)))}</td>' for m in metrics)
        rows.append(f"<tr><th>{escape(kind)}</th>{cells}</tr>")
    return f'<table class="summary"><tr><th></th>{head}</tr>{"".join(rows)}</table>'


def _image_cell(row: Mapping[str, Any]) -> str:
    data = base64.b64encode(row["image"]).decode("ascii")
    mime = imaging.mime_type(row["image"])
    label = row.get("label")
    caption = f'<span class="label">{escape(str(label))}</span>' if label is not None else ""
    return f'<td><img src="data:{mime};base64,{data}" alt="">{caption}</td>'


def _caption_cell(kind: str, text: str, marks: CaptionMarks | None) -> str:
    body = escape(text) if marks is None else marked_text(text, marks.wrong)
    if marks is not None and marks.missed:
        body += f'<span class="missed">missed: {escape("; ".join(marks.missed))}</span>'
    return f'<td><span class="kind">{escape(kind)}</span>{body}</td>'


def _caption_row(row: Mapping[str, Any]) -> str:
    marks = row.get("marks") or {}
    cells = "".join(
        _caption_cell(kind, text, marks.get(kind)) for kind, text in row["captions"].items()
    )
    return f"<tr>{_image_cell(row)}{cells}</tr>"


def render_caption_table(
    rows: Sequence[Mapping[str, Any]],
    title: str,
    summary: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """A standalone HTML page with one row per image, as in a paper's caption figure.

    Args:
        rows: each {"image": PNG, JPEG or WebP bytes, "captions": {kind: text, ...},
            "label": optional text shown under the thumbnail, "marks": optional
            {kind: CaptionMarks}};
            caption columns follow the dict's order. A legend is shown if any row
            has marks.
        title: page heading.
        summary: optional {caption kind: {metric: value}}, shown as a table above.

    Returns:
        The page as a string (UTF-8, no external references).
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]
    if summary:
        parts.append(summary_table(summary))
    if any(row.get("marks") for row in rows):
        parts.append(LEGEND)
    parts.append('<table class="captions">')
    parts.extend(_caption_row(row) for row in rows)
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"

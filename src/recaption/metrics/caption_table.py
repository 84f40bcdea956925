"""A caption figure as one standalone HTML page: thumbnail, then each caption kind.

The page has no external assets (images are base64 data URIs, CSS is inline), so
it can be attached to a report or opened from an artifact store as is. Every
piece of text is HTML-escaped: captions come from scraped and generated data.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

THUMBNAIL_PX = 128

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
"""


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
    label = row.get("label")
    caption = f'<span class="label">{escape(str(label))}</span>' if label is not None else ""
    return f'<td><img src="data:image/png;base64,{data}" alt="">{caption}</td>'


def _caption_row(row: Mapping[str, Any]) -> str:
    cells = "".join(
        f'<td><span class="kind">{escape(kind)}</span>{escape(text)}</td>'
        for kind, text in row["captions"].items()
    )
    return f"<tr>{_image_cell(row)}{cells}</tr>"


def render_caption_table(
    rows: Sequence[Mapping[str, Any]],
    title: str,
    summary: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """A standalone HTML page with one row per image, as in a paper's caption figure.

    Args:
        rows: each {"image": PNG bytes, "captions": {kind: text, ...}, "label": optional
            text shown under the thumbnail}; caption columns follow the dict's order.
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
    parts.append('<table class="captions">')
    parts.extend(_caption_row(row) for row in rows)
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"

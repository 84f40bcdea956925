"""reports/index.html: the evaluation at a glance, linking every other report.

One page with the generator's caption version, prompt following per category
and phrasing (GenEval's all-or-nothing rules, and fact accuracy, graded with a 95 %
interval) or, with a real source, a line saying why they are not measured, CLIP
scores (per phrasing and category for a prompts file of one's own), the distance of
the generated images to real held-out ones (FID and KID on CLIP features), the
evaluation models' own accuracy, and a sample grid per category with the prompts of
its rows. Grids are linked PNGs beside the page (reports/grids/); all text is
HTML-escaped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from html import escape
from typing import Any

from recaption.metrics.caption_table import CSS, summary_table

_GRID_CSS = """
img.grid { width: auto; height: auto; image-rendering: pixelated; }
ol.prompts { font-size: 0.85em; color: #444; }
ol.prompts span { color: #888; }
"""
_CHANCE_NOTE = (
    "chance: the same rules applied to scenes drawn from the world with the prompt ignored, "
    "what a generator that draws good pictures but does not read the prompt would score."
)
_FACTS_NOTE = (
    "fact accuracy: the share of a prompt's atomic facts (each object's presence, colour, "
    "count, the relation; a fact fails with the facts it presupposes) an image gets right, "
    "averaged over a prompt's images, then over prompts, then over categories; in brackets "
    "the 95 % bootstrap interval over prompts. Held-out: descriptive captions, judged on the "
    "facts they state that are true of the image's scene, background and cells included."
)
_DISTANCE_NOTE = (
    "FID and KID of each set's images against the held-out split's real images, on the "
    "evaluation CLIP's L2-normalised image embeddings, not Inception features: comparable "
    "between runs scored by the same evaluation CLIP, not with published FIDs. Lower is "
    "closer; KID is the unbiased MMD^2 (cubic kernel), mean and standard deviation over "
    "subsets."
)
_LINKS = (
    ("captions.html", "caption table: held-out images with their three captions"),
    ("captions.json", "caption quality figures"),
    ("metrics.json", "evaluation metrics (DVC metrics)"),
    ("oracle.json", "oracle detector accuracy on held-out renders"),
    ("eval_clip.json", "evaluation CLIP retrieval on held-out renders"),
    ("blend.json", "the blend and its caption version"),
)


def _following_table(following: Mapping[str, Mapping[str, float]]) -> str:
    """Categories as rows, phrasings as columns."""
    pivot: dict[str, dict[str, Any]] = {}
    for phrasing, scores in following.items():
        for category, value in scores.items():
            pivot.setdefault(category, {})[phrasing] = value
    return summary_table(pivot)


def _with_interval(value: float, ci: list[float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _facts_table(metrics: Mapping[str, Any]) -> str:
    """Categories as rows; each phrasing (value and interval), chance and held-out as columns."""
    pivot: dict[str, dict[str, Any]] = {}
    for phrasing, table in metrics["fact_accuracy"].items():
        for category, value in table.items():
            if category != "ci95":
                pivot.setdefault(category, {})[phrasing] = _with_interval(
                    value, table["ci95"][category]
                )
    for category, value in metrics.get("fact_accuracy_chance", {}).items():
        pivot.setdefault(category, {})["chance (prompt ignored)"] = value
    for phrasing, table in metrics.get("fact_accuracy_heldout", {}).items():
        pivot.setdefault("overall", {})[f"held-out {phrasing}"] = _with_interval(
            table["overall"], table["ci95"]["overall"]
        )
    return summary_table(pivot)


def _by_kind(by_kind: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Kinds of fact as rows, phrasings as columns."""
    pivot: dict[str, dict[str, float]] = {}
    for phrasing, shares in by_kind.items():
        for kind, share in shares.items():
            pivot.setdefault(kind, {})[phrasing] = share
    return pivot


def _by_set_table(figures: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """One row per prompt set and phrasing."""
    return summary_table(
        {f"{s}: {p}": v for s, by_phrasing in figures.items() for p, v in by_phrasing.items()}
    )


def _by_category_table(figures: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Categories as rows; each phrasing's figures as columns ("as_written clipscore")."""
    pivot: dict[str, dict[str, float]] = {}
    for phrasing, by_category in figures.items():
        for category, values in by_category.items():
            row = pivot.setdefault(category, {})
            row.update({f"{phrasing} {name}": value for name, value in values.items()})
    return summary_table(pivot)


def _not_measured(reasons: Mapping[str, str]) -> str:
    items = "".join(f"<li>{escape(what)}: {escape(why)}</li>" for what, why in reasons.items())
    return f"<ul>{items}</ul>"


def grid_file(category: str) -> str:
    """The grid PNG's file name: a category from a prompt file may hold any character."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", category) + ".png"


def _grid_section(category: str, grid: Mapping[str, Any], folder: str) -> str:
    columns = ", ".join(grid["columns"])
    items = "".join(
        "<li>"
        + "<br>".join(f"<span>{escape(p)}:</span> {escape(t)}" for p, t in row.items())
        + "</li>"
        for row in grid["prompts"]
    )
    return (
        f"<h3>{escape(category)}</h3><p>columns: {escape(columns)}</p>"
        f'<img class="grid" src="{escape(folder)}/{escape(grid_file(category))}" '
        f'alt="{escape(category)}">'
        f'<ol class="prompts">{items}</ol>'
    )


def render_index(metrics: Mapping[str, Any], grids: Mapping[str, Mapping], folder: str) -> str:
    """The page as a string; `grids` as built by the evaluate stage, PNGs in `folder`."""
    gen = metrics["generator"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>recaption: evaluation</title><style>{CSS}{_GRID_CSS}</style></head><body>",
        "<h1>recaption: evaluation</h1>",
        f"<p>generator <code>{escape(str(gen['sha256'])[:16])}</code>, trained on caption "
        f"version <code>{escape(str(gen['caption_version'])[:16])}</code>; "
        f"{metrics['images']} images drawn.</p>",
        "<ul>"
        + "".join(f'<li><a href="{escape(h)}">{escape(h)}</a>: {escape(d)}</li>' for h, d in _LINKS)
        + "</ul>",
    ]
    if metrics.get("noise_check", {}).get("looks_like_noise"):
        parts.append(
            '<p class="warning"><strong>The generated images look like noise</strong> (see '
            "noise_check in metrics.json): no score on this page means anything.</p>"
        )
    if metrics.get("not_measured"):
        parts += ["<h2>Not measured</h2>", _not_measured(metrics["not_measured"])]
    if metrics.get("prompt_following"):
        columns = dict(metrics["prompt_following"])
        if "prompt_following_chance" in metrics:
            columns["chance (prompt ignored)"] = metrics["prompt_following_chance"]
        parts += ["<h2>Prompt following (oracle detector)</h2>", _following_table(columns),
                  f"<p>{escape(_CHANCE_NOTE)}</p>"]  # fmt: skip
    if metrics.get("fact_accuracy"):
        parts += ["<h2>Fact accuracy (oracle detector, graded)</h2>", _facts_table(metrics),
                  f"<p>{escape(_FACTS_NOTE)}</p>", "<h3>Facts that hold, by kind</h3>",
                  summary_table(_by_kind(metrics["fact_accuracy_by_kind"]))]  # fmt: skip
    parts += ["<h2>CLIP score (evaluation CLIP)</h2>", _by_set_table(metrics["clip_score"])]
    if metrics.get("clip_score_by_category"):
        parts += ["<h3>Your prompts, by category</h3>",
                  _by_category_table(metrics["clip_score_by_category"])]  # fmt: skip
    if metrics.get("image_distance"):
        parts += ["<h2>Distance to real held-out images (CLIP features)</h2>",
                  _by_set_table(metrics["image_distance"]),
                  f"<p>{escape(_DISTANCE_NOTE)}</p>"]  # fmt: skip
    models = metrics.get("evaluation_models", {})
    if models.get("oracle_accuracy"):
        parts += ["<h2>Oracle accuracy on held-out renders</h2>",
                  summary_table({"oracle": models["oracle_accuracy"]})]  # fmt: skip
    parts.append("<h2>Samples</h2>")
    parts += [_grid_section(c, g, folder) for c, g in grids.items()]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

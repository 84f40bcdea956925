"""The evaluation's summaries of its samples table, in plain values: CLIP scores per
prompt set and phrasing (and per phrasing and category of a user's prompts), prompt
following per phrasing and category, the plots' CSVs and the sample grids.

Every image carries its CLIP cosine under the evaluation CLIP, read in both conventions
in use (`recaption.metrics.clip_score`). Prompt following is GenEval's: a mean over
categories, not over images.
"""

from __future__ import annotations

import io as stdio
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from recaption import io
from recaption.metrics.clip_score import clip_scores
from recaption.models import generator as gen_lib

# The set of the prompts of a user's prompt file (evaluate.prompts_file).
USER_SET = "prompts"


def summarise(samples: pa.Table) -> dict:
    """Prompt following per phrasing and category, CLIP scores per set and phrasing, and
    (with a prompts file) CLIP scores per phrasing and category of the user's prompts."""
    rows = samples.select(["set", "phrasing", "category", "cos", "follows"]).to_pylist()
    follows: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    cosines: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    # phrasing -> category -> cosines of the user's prompts
    user: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cosines[r["set"]][r["phrasing"]].append(r["cos"])
        if r["set"] == USER_SET:
            user[r["phrasing"]][r["category"]].append(r["cos"])
        if r["follows"] is not None:
            follows[r["phrasing"]][r["category"]].append(r["follows"])
    following = {}
    for phrasing, by_category in follows.items():
        scores = {c: round(float(np.mean(v)), 4) for c, v in by_category.items()}
        # GenEval's overall score: the mean over categories, not over images.
        following[phrasing] = {"overall": round(float(np.mean(list(scores.values()))), 4), **scores}
    clip = {
        s: {p: clip_scores(np.asarray(v)) for p, v in by_phrasing.items()}
        for s, by_phrasing in cosines.items()
    }
    out = {"prompt_following": following, "clip_score": clip, "images": len(rows)}
    if user:
        out["clip_score_by_category"] = {
            p: {c: clip_scores(np.asarray(v)) for c, v in by_category.items()}
            for p, by_category in user.items()
        }
    return out


def write_plots(metrics: dict, out: Path) -> None:
    """Per-category accuracy per phrasing, and CLIP score per set and phrasing (DVC plots)."""
    for phrasing, scores in metrics.get("prompt_following", {}).items():
        lines = ["category,accuracy"] + [f"{c},{v}" for c, v in scores.items() if c != "overall"]
        io.write_text(out / f"prompt_following_{phrasing}.csv", "\n".join(lines) + "\n")
    lines = ["prompts,clipscore,cos100"] + [
        f"{s} {p},{v['clipscore']},{v['cos100']}"
        for s, by_phrasing in metrics["clip_score"].items()
        for p, v in by_phrasing.items()
    ]
    io.write_text(out / "clip_score.csv", "\n".join(lines) + "\n")


def image_grids(samples: pa.Table, per_category: int, scale: int = 3) -> dict[str, dict]:
    """For each category (and the held-out set) a grid of the first `per_category` items:
    one row per item with each phrasing's images, the row prompts and the column labels."""
    by_category: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in samples.to_pylist():
        by_category[r["category"]][r["item"]].append(r)
    grids = {}
    for category, items in by_category.items():
        rows = list(items.values())[:per_category]
        columns = max(len(row) for row in rows)
        tiles, prompts = [], []
        for row in rows:
            for r in row:
                image = Image.open(stdio.BytesIO(r["image"])).convert("RGB")
                tiles.append(image.resize((image.width * scale,) * 2, Image.NEAREST))
            tiles += [Image.new("RGB", tiles[-1].size, "white")] * (columns - len(row))
            prompts.append({r["phrasing"]: r["prompt"] for r in row})
        labels = [f"{r['phrasing']} #{r['key'].rsplit('/', 1)[1]}" for r in rows[0]]
        image = gen_lib.image_grid(tiles, columns)
        grids[category] = {"image": image, "prompts": prompts, "columns": labels}
    return grids

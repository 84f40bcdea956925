"""Fact accuracy and the noise guard (see `recaption.metrics.facts` and
`recaption.metrics.noise_guard`) on an evaluation's samples table (the evaluate stage's).

- Suite images are judged fact by fact against their prompt's demands, the same facts
  in every phrasing (a descriptive or upsampled prompt may add a background or cells,
  but the short prompt does not state them, so they are not scored).
- Held-out descriptive captions (built-in world): the facts the caption states that
  are true of the image's scene (`facts.caption_demands`), background and cells
  included. Ground-truth and short captions are not scored: they state too little.
- Before any metric is written the generated images are compared with the dataset's
  held-out images, and a batch that looks like noise is refused.
"""

from __future__ import annotations

import io as stdio
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from recaption import datasets, io
from recaption.metrics import facts, noise_guard
from recaption.metrics.captions import scene_from_meta

log = logging.getLogger(__name__)
# Held-out dataset images the noise guard measures the dataset's roughness on.
NOISE_REFERENCE = 256
# The held-out phrasing scored for fact accuracy.
HELDOUT_PHRASING = "descriptive"


def _round(x: float) -> float:
    return round(float(x), 4)


# ---- scoring -----------------------------------------------------------------------------


def heldout_demands(dataset: str | Path, items: Iterable[str]) -> dict[str, dict]:
    """Held-out key -> the demands of its descriptive caption, from the scene in the
    `meta` of the `dataset` folder's rows (built-in world only)."""
    rows = datasets.load_rows(dataset, ["descriptive", "meta"], set(items))
    return {
        r["key"]: facts.caption_demands(r["descriptive"], scene_from_meta(r["meta"]))
        for r in rows
        if r["descriptive"]
    }


def _demands_of(row: Mapping[str, Any], heldout: Mapping[str, dict]) -> dict | None:
    if row["set"] == "suite":
        return json.loads(row["demands"])
    if row["phrasing"] == HELDOUT_PHRASING:
        return heldout.get(row["item"])
    return None


def score_facts(samples: pa.Table, heldout: Mapping[str, dict]) -> pa.Table:
    """`samples` plus `fact_accuracy` (float) and `facts` (JSON: each fact's kind, text
    and verdict) per image; null where nothing is scored (no oracle, no demands)."""
    accuracy: list[float | None] = []
    verdicts: list[str | None] = []
    for row in samples.select(["set", "item", "phrasing", "demands", "detection"]).to_pylist():
        demands = _demands_of(row, heldout)
        detection = json.loads(row["detection"]) if row["detection"] else None
        judged = facts.verdicts(detection, demands) if demands else []
        listed = [{"kind": f.kind, "fact": f.text, "holds": held} for f, held in judged]
        accuracy.append(sum(v["holds"] for v in listed) / len(listed) if listed else None)
        verdicts.append(json.dumps(listed) if listed else None)
    samples = samples.append_column("fact_accuracy", pa.array(accuracy, pa.float64()))
    return samples.append_column("facts", pa.array(verdicts, pa.string()))


# ---- summaries ---------------------------------------------------------------------------


def fact_table(
    by_category: Mapping[str, Mapping[str, Sequence[float]]], per_category: bool = True
) -> dict[str, Any]:
    """{"overall", each category (if `per_category`), "ci95": the same keys -> [lo, hi]}.

    Args:
        by_category: category -> prompt id -> the fact accuracy of each of its images.
            "overall" is the mean over categories (as GenEval's), each a mean over
            prompts of the mean over the prompt's images.
    """
    strata = list(by_category.values())
    out: dict[str, Any] = {"overall": _round(facts.stratified_mean(strata))}
    ci: dict[str, list[float]] = {"overall": [_round(v) for v in facts.bootstrap_interval(strata)]}
    if per_category:
        for category, items in by_category.items():
            out[category] = _round(facts.stratified_mean([items]))
            ci[category] = [_round(v) for v in facts.bootstrap_interval([items])]
    return {**out, "ci95": ci}


def summarise_facts(samples: pa.Table) -> dict[str, Any]:
    """The metrics.json keys of fact accuracy, from `score_facts`'s columns.

    fact_accuracy: suite, per phrasing, shaped like prompt_following plus ci95;
    fact_accuracy_heldout: held-out descriptive captions, overall and ci95;
    fact_accuracy_by_kind: suite, per phrasing, share of the facts of each kind that hold
    (pooled over images).
    """
    scores: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    kinds: dict = defaultdict(lambda: defaultdict(list))
    columns = ["set", "item", "category", "phrasing", "fact_accuracy", "facts"]
    for r in samples.select(columns).to_pylist():
        if r["fact_accuracy"] is None:
            continue
        scores[r["set"]][r["phrasing"]][r["category"]][r["item"]].append(r["fact_accuracy"])
        if r["set"] == "suite":
            for verdict in json.loads(r["facts"]):
                kinds[r["phrasing"]][verdict["kind"]].append(verdict["holds"])
    return {
        "fact_accuracy": {p: fact_table(c) for p, c in scores["suite"].items()},
        "fact_accuracy_heldout": {
            p: fact_table(c, per_category=False) for p, c in scores["heldout"].items()
        },
        "fact_accuracy_by_kind": {
            p: {k: _round(np.mean(v)) for k, v in by_kind.items()} for p, by_kind in kinds.items()
        },
    }


def chance_fact_accuracy(
    detections: Sequence[Mapping[str, Any]], suite: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """Fact accuracy of `detections` (scenes drawn with the prompt ignored) on every prompt
    of `suite` (rows of data/prompts/suite.parquet): overall and per category."""
    by_category: dict[str, list[float]] = defaultdict(list)
    for row in suite:
        demands = json.loads(row["demands"])
        by_category[row["category"]].append(
            np.mean([facts.fact_accuracy(d, demands) for d in detections])
        )
    scores = {c: _round(np.mean(v)) for c, v in by_category.items()}
    return {"overall": _round(np.mean(list(scores.values()))), **scores}


def write_fact_plots(metrics: Mapping[str, Any], out: Path) -> None:
    """`out`/fact_accuracy_<phrasing>.csv: per category, with its interval."""
    for phrasing, table in metrics.get("fact_accuracy", {}).items():
        lines = ["category,accuracy,ci95_low,ci95_high"] + [
            f"{c},{v},{table['ci95'][c][0]},{table['ci95'][c][1]}"
            for c, v in table.items()
            if c not in ("overall", "ci95")
        ]
        io.write_text(out / f"fact_accuracy_{phrasing}.csv", "\n".join(lines) + "\n")


# ---- the noise guard ---------------------------------------------------------------------


def _pixels(pngs: Sequence[bytes]) -> np.ndarray:
    """uint8 (N, H, W, 3) from encoded images of one size."""
    return np.stack([np.asarray(Image.open(stdio.BytesIO(b)).convert("RGB")) for b in pngs])


def noise_check(
    samples: pa.Table, dataset: str | Path, splits: str | Path, guard: bool = True
) -> dict[str, Any]:
    """Refuse (NoiseError) generated images that look like noise, against up to
    NOISE_REFERENCE held-out images of the `dataset` folder (held out by the `splits`
    file); returns the figures for metrics.json.

    With `guard` off (`evaluate.noise_guard: false`, as the tests' 3-step generator
    needs) it warns instead, and metrics.json and the page say so.
    """
    held = sorted(datasets.read_splits(splits)["heldout"])[:NOISE_REFERENCE]
    reference = [r["image"] for r in datasets.load_rows(dataset, ["image"], set(held))]
    generated = _pixels(samples.column("image").to_pylist())
    if not guard:
        check = noise_guard.check_noise(generated, _pixels(reference))
        if check.noise:
            log.warning("evaluate.noise_guard is off: reporting on images that look like noise")
    else:
        check = noise_guard.refuse_noise(generated, _pixels(reference))
    return {
        "roughness": _round(check.generated),
        "dataset_roughness": _round(check.reference),
        "refused_above": _round(check.threshold),
        "looks_like_noise": check.noise,
    }

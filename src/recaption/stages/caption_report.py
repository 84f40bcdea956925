"""caption_report: how good the captions are, on the held-out split.

For each caption kind (the dataset's ground truth, and the synthetic short and
descriptive captions) the report gives the mean length and BLEU-4 / CIDEr-D
against reference captions; in the synthetic world also the attribute
precision and recall against the scene, CHAIR hallucination rates, and how
often the main subject is named. The classification tags
(data/captions/tags.parquet) get their accuracy against the scene, tag by tag;
real data has no reference to check them against, so only their coverage.
Without references, on any source: each caption set's CLIPScore against its own
images under the evaluation CLIP (2.5 * max(cos, 0), Hessel et al. 2021) and its
vocabulary (distinct words), for the upsampled ground truth too where every held-out
image has one.
reports/captions.html shows held-out images with their three captions side by
side, as in the study's caption figure; in the synthetic world each caption's
false phrases are struck through and its missed facts listed.
"""

from __future__ import annotations

import io as stdio
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from recaption import datasets, io, paths, sampling
from recaption.errors import UserError
from recaption.metrics import captions as cm
from recaption.metrics import tags as tag_metrics
from recaption.metrics.caption_table import caption_marks, render_caption_table
from recaption.metrics.clip_score import clip_scores, paired_cosines
from recaption.models import clip as clip_lib
from recaption.params import load_params
from recaption.world import Scene, descriptive_caption, short_caption

log = logging.getLogger(__name__)
KINDS = ("ground truth", "short", "descriptive")
# Which references each kind is scored against: what it is meant to say.
REFERENCE_OF = {"ground truth": "descriptive", "short": "short", "descriptive": "descriptive"}
REFERENCES_PER_IMAGE = 5  # synthetic world: phrasings drawn from the scene, as COCO has 5
TABLE_ROWS = 24
TARGETS = {  # the targets for the default config, checked on every run
    "descriptive_recall": ("descriptive", "recall", 0.80),
    "descriptive_precision": ("descriptive", "precision", 0.90),
    "short_main_subject": ("short", "main_subject", 0.90),
}


def scene_references(scene: Scene, key: str, seed: int) -> dict[str, list[str]]:
    """Reference captions of one synthetic scene in several phrasings, seeded by key."""
    out: dict[str, list[str]] = {"short": [], "descriptive": []}
    for i in range(REFERENCES_PER_IMAGE):
        rng = np.random.default_rng([seed, int(io.sha256_bytes(key.encode())[:8], 16), i])
        out["short"].append(short_caption(scene, rng))
        out["descriptive"].append(descriptive_caption(scene, rng))
    return out


def score_kind(texts: list[str], refs: list[list[str]] | None, scenes: list[Scene] | None) -> dict:
    scores: dict = {"mean_words": round(cm.mean_words(texts), 3)}
    if refs is not None and len(texts) > 1:
        scores["bleu4"] = round(cm.bleu4(texts, refs), 4)
        scores["cider_d"] = round(cm.cider_d(texts, refs), 4)
    if scenes is not None:
        attrs = cm.attribute_scores(texts, scenes)
        scores.update(
            {k: v if v is None else round(v, 4) for k, v in attrs.items() if k != "by_kind"}
        )
        scores["by_kind"] = {
            kind: {m: v if v is None else round(v, 4) for m, v in figures.items()}
            for kind, figures in attrs["by_kind"].items()
        }
        scores["main_subject"] = round(cm.main_subject_accuracy(texts, scenes), 4)
    return scores


def upsampled_captions(keys: list[str]) -> list[str] | None:
    """The upsampled ground truth of `keys`, in that order; None unless every key has one
    (the upsample_captions stage writes an empty table when blend.use_upsampled is off)."""
    table = pq.read_table(paths.UPSAMPLED_CAPTIONS, columns=["key", "upsampled"]).to_pylist()
    by_key = {r["key"]: r["upsampled"] for r in table if r["upsampled"]}
    return [by_key[k] for k in keys] if all(k in by_key for k in keys) else None


def reference_free(images: list[bytes], texts: dict[str, list[str]]) -> dict[str, dict]:
    """Per caption set: CLIPScore of each caption against its own image under the
    evaluation CLIP (mean over images) and the vocabulary (distinct words)."""
    clip = clip_lib.load(paths.EVAL_CLIP)
    pixels = clip_lib.image_embeddings(clip, [Image.open(stdio.BytesIO(b)) for b in images])
    return {
        kind: {
            "clipscore": clip_scores(
                paired_cosines(pixels, clip_lib.text_embeddings(clip, captions))
            )["clipscore"],
            "vocabulary": cm.vocabulary(captions),
        }
        for kind, captions in texts.items()
    }


def read_tags(keys: list[str]) -> list[dict]:
    """The tag rows of `keys`, in that order, from data/captions/tags.parquet."""
    by_key = {row["key"]: row for row in pq.read_table(paths.CAPTION_TAGS).to_pylist()}
    return [by_key[key] for key in keys]


def tag_scores(tags: list[dict], scenes: list[Scene] | None) -> dict:
    """Per-tag accuracy against `scenes` (parallel to `tags`) and coverage; with no
    scenes (real data), coverage only."""
    coverage = {tag: round(v, 4) for tag, v in tag_metrics.tag_coverage(tags).items()}
    if scenes is None:
        return {"reference": "none (real data): coverage only", "coverage": coverage}
    accuracy = tag_metrics.tag_accuracy(tags, scenes)
    return {
        "reference": "the scenes",
        "accuracy": {tag: round(v, 4) for tag, v in accuracy.items()},
        "coverage": coverage,
    }


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    heldout = datasets.read_splits(paths.SPLITS)["heldout"]
    rows = datasets.load_rows(
        paths.DATASET, ["image", "caption", "short", "descriptive", "meta"], heldout
    )
    table = pq.read_table(paths.SYNTHETIC_CAPTIONS, columns=["key", "short", "descriptive"])
    made = {r["key"]: r for r in table.to_pylist() if r["key"] in heldout}
    rows = [r for r in rows if r["key"] in made]
    if not rows:
        raise UserError("no held-out image has synthetic captions: run recaption first")
    texts = {
        "ground truth": [r["caption"] for r in rows],
        "short": [made[r["key"]]["short"] for r in rows],
        "descriptive": [made[r["key"]]["descriptive"] for r in rows],
    }
    world = params.data.source == "synthetic"
    scenes = [cm.scene_from_meta(r["meta"]) for r in rows] if world else None
    if world:
        refs_by_row = [
            scene_references(s, r["key"], params.seed) for s, r in zip(scenes, rows, strict=True)
        ]
        references = {
            kind: [refs[kind] for refs in refs_by_row] for kind in ("short", "descriptive")
        }
    else:  # a real source: its reference columns, where every held-out row has one
        references = {
            kind: [[r[kind]] for r in rows] if all(r[kind] for r in rows) else None
            for kind in ("short", "descriptive")
        }
    report: dict = {"images": len(rows), "source": params.data.source, "kinds": {}}
    report["tags"] = tag_scores(read_tags([r["key"] for r in rows]), scenes)
    for kind in KINDS:
        report["kinds"][kind] = score_kind(texts[kind], references[REFERENCE_OF[kind]], scenes)
    upsampled = upsampled_captions([r["key"] for r in rows])
    if upsampled is not None:
        report["kinds"]["upsampled"] = {"mean_words": round(cm.mean_words(upsampled), 3)}
    scored = {**texts, **({"upsampled": upsampled} if upsampled is not None else {})}
    for kind, figures in reference_free([r["image"] for r in rows], scored).items():
        report["kinds"][kind].update(figures)
    k = report["kinds"]
    report["length_ratio_descriptive_to_short"] = length_ratio(
        k["descriptive"]["mean_words"], k["short"]["mean_words"]
    )
    if world:
        report["targets"] = {
            name: {"value": k[kind][metric], "target": goal, "met": (k[kind][metric] or 0) >= goal}
            for name, (kind, metric, goal) in TARGETS.items()
        }
        ratio = report["length_ratio_descriptive_to_short"]
        met = ratio is not None and ratio >= 2.0
        report["targets"]["length_ratio"] = {"value": ratio, "target": 2.0, "met": met}
    io.write_json(paths.CAPTIONS_REPORT, report)
    write_table_page(rows, texts, report, params.seed, scenes)
    log.info(
        "caption_report: %s",
        {kind: {m: v for m, v in s.items() if m != "by_kind"} for kind, s in k.items()},
    )
    return report


def length_ratio(descriptive_words: float, short_words: float) -> float | None:
    """Mean words of the descriptive captions over the short ones'; None when every short
    caption is empty (an undertrained captioner's), rather than a ratio over an epsilon."""
    return round(descriptive_words / short_words, 3) if short_words else None


def table_row(row: dict, captions: dict[str, str], scene: Scene | None) -> dict[str, object]:
    """One row of the caption page: image, key and captions, marked where the scene is known."""
    out: dict[str, object] = {"image": row["image"], "label": row["key"], "captions": captions}
    if scene is not None:
        out["marks"] = {kind: caption_marks(text, scene) for kind, text in captions.items()}
    return out


def write_table_page(
    rows: list[dict],
    texts: dict[str, list[str]],
    report: dict,
    seed: int,
    scenes: list[Scene] | None = None,
) -> None:
    """reports/captions.html: TABLE_ROWS seeded held-out images with their three captions.

    `scenes` (parallel to `rows`, synthetic world only) turn on the wrong/missed marks.
    """
    index = {r["key"]: i for i, r in enumerate(rows)}
    shown = sorted(sampling.pick(list(index), min(TABLE_ROWS, len(rows)), seed, "caption-table"))
    table_rows = []
    for i in (index[key] for key in shown):
        scene = None if scenes is None else scenes[i]
        table_rows.append(table_row(rows[i], {kind: texts[kind][i] for kind in KINDS}, scene))
    summary = {
        kind: {m: v for m, v in scores.items() if m != "by_kind"}
        for kind, scores in report["kinds"].items()
    }
    html = render_caption_table(table_rows, "Captions of held-out images", summary)
    with io.atomic_path(paths.CAPTIONS_HTML) as tmp:
        tmp.write_text(html, encoding="utf-8")

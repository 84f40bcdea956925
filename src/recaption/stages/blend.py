"""blend: relabel the dataset with a blend of synthetic and ground-truth captions.

Writes data/relabeled/captions.parquet (key, caption, source, and the candidates:
ground_truth, short, descriptive, and upsampled (null unless `blend.use_upsampled`),
so per-epoch training can redraw) and data/relabeled/blend.json (the blend's params
and the hashes of what it read).
The caption version, the content hash of data/relabeled/, names the captions a
generator was trained on; reports/blend.json gives it with the realised shares.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recaption import datasets, io, lineage, paths
from recaption.blend import SOURCES, SYNTHETIC, Blend, binomial_bounds
from recaption.errors import UserError
from recaption.params import Params, load_params

log = logging.getLogger(__name__)
CHECK_EPOCHS = 3  # per_epoch mode: epochs whose realised shares the report checks


def blend_of(params: Params) -> Blend:
    bp = params.blend
    return Blend(
        bp.synthetic_ratio, bp.synthetic_kind, bp.short_fraction, bp.mode, params.seed,
        bp.use_upsampled,
    )  # fmt: skip


def candidates(keys: list[str], use_upsampled: bool) -> dict[str, list[str | None]]:
    """Every candidate caption of every key, in key order: the ground truth, both
    synthetic captions, and the ground truth's upsampled rewrite (None when unused)."""
    truth = {r["key"]: r["caption"] for r in datasets.load_rows(paths.DATASET, ["caption"])}
    synthetic = pq.read_table(paths.SYNTHETIC_CAPTIONS, columns=["key", "short", "descriptive"])
    made = {r["key"]: r for r in synthetic.to_pylist()}
    missing = [k for k in keys if k not in made]
    if missing:
        raise UserError(
            f"{len(missing)} dataset images have no synthetic caption (first: {missing[0]}): "
            "rerun recaption"
        )
    upsampled: list[str | None] = [None] * len(keys)
    if use_upsampled:
        rewrites = pq.read_table(paths.UPSAMPLED_CAPTIONS, columns=["key", "upsampled"])
        by_key = dict(zip(*rewrites.to_pydict().values(), strict=True))
        missing = [k for k in keys if by_key.get(k) is None]
        if missing:
            raise UserError(
                f"blend.use_upsampled: {len(missing)} dataset images have no upsampled caption "
                f"(first: {missing[0]}): rerun upsample_captions"
            )
        upsampled = [by_key[k] for k in keys]
    return {
        "ground_truth": [truth[k] for k in keys],
        "short": [made[k]["short"] for k in keys],
        "descriptive": [made[k]["descriptive"] for k in keys],
        "upsampled": upsampled,
    }


def shares(sources: list[str]) -> dict[str, float]:
    counts = Counter(sources)
    return {s: round(counts[s] / len(sources), 6) for s in SOURCES}


def synthetic_share(sources: list[str]) -> float:
    """The share of captions the captioner wrote (short or descriptive)."""
    return round(sum(s in SYNTHETIC for s in sources) / len(sources), 6)


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    blend = blend_of(params)
    keys = [r["key"] for r in datasets.load_rows(paths.DATASET, [])]
    cands = candidates(keys, blend.upsampled)
    captions, sources = blend.captions(keys, cands)
    table = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "caption": pa.array(captions, pa.string()),
            "source": pa.array(sources, pa.string()),
            **{name: pa.array(cands[name], pa.string()) for name in SOURCES},
        }
    )
    with io.atomic_path(paths.RELABELED) as tmp:
        tmp.mkdir()
        io.write_table(tmp / paths.RELABELED_CAPTIONS.name, table)
        io.write_json(
            tmp / paths.BLEND_CONFIG.name,
            {
                **params.blend.model_dump(),
                "seed": params.seed,
                "synthetic_captions": lineage.tree_hash(paths.SYNTHETIC_CAPTIONS),
                "upsampled_captions": lineage.tree_hash(paths.UPSAMPLED_CAPTIONS)
                if blend.upsampled
                else None,
                "dataset": lineage.tree_hash(paths.DATASET),
            },
        )
    low, high = binomial_bounds(len(keys), blend.ratio)
    epochs = range(CHECK_EPOCHS if blend.mode == "per_epoch" else 1)
    realised = [synthetic_share([blend.source(k, e) for k in keys]) for e in epochs]
    report = {
        "caption_version": lineage.tree_hash(paths.RELABELED),
        "images": len(keys),
        **params.blend.model_dump(),
        "shares": shares(sources),
        "synthetic_share": realised[0],
        "synthetic_share_by_epoch": realised if blend.mode == "per_epoch" else None,
        "expected_interval": [round(low, 6), round(high, 6)],
        "within_interval": all(low <= r <= high for r in realised),
    }
    io.write_json(paths.BLEND_REPORT, report)
    log.info("blend: version %s, shares %s", report["caption_version"][:12], report["shares"])
    return report

"""blend: relabel the dataset with a blend of synthetic and ground-truth captions.

Writes data/relabeled/captions.parquet (key, caption, source, and the candidates:
ground_truth, short, descriptive, and upsampled (null unless `blend.use_upsampled`),
so per-epoch training can redraw) and data/relabeled/blend.json (the blend's params
and the hashes of what it read). The short and descriptive candidates are the
captioner's, or with `blend.synthetic_source: reference` the dataset's own reference
captions (a perfect captioner; data/captions/synthetic.parquet is then not read).
The caption version, the content hash of data/relabeled/, names the captions a
generator was trained on; reports/blend.json gives it with the realised shares.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recaption import datasets, io, lineage, paths
from recaption.blend import SOURCES, SYNTHETIC, binomial_bounds
from recaption.blend_params import blend_of
from recaption.errors import UserError
from recaption.params import Params, load_params

log = logging.getLogger(__name__)
CHECK_EPOCHS = 3  # per_epoch mode: epochs whose realised shares the report checks


def candidates(
    keys: list[str], use_upsampled: bool, source: str = "captioner",
    kinds: Sequence[str] = SYNTHETIC,
) -> dict[str, list[str | None]]:  # fmt: skip
    """Every candidate caption of every key, in key order: the ground truth, both
    synthetic captions (the captioner's, or with `source` "reference" the dataset's own,
    where every key needs those of `kinds`), and the ground truth's upsampled rewrite
    (None when unused)."""
    reference = source == "reference"
    columns = ["caption", *SYNTHETIC] if reference else ["caption"]
    rows = {r["key"]: r for r in datasets.load_rows(paths.DATASET, columns)}
    synthetic = reference_captions(keys, rows, kinds) if reference else captioner_captions(keys)
    return {
        "ground_truth": [rows[k]["caption"] for k in keys],
        **synthetic,
        "upsampled": upsampled_captions(keys) if use_upsampled else [None] * len(keys),
    }


def captioner_captions(keys: list[str]) -> dict[str, list[str | None]]:
    """The captioner's short and descriptive caption of every key."""
    table = pq.read_table(paths.SYNTHETIC_CAPTIONS, columns=["key", *SYNTHETIC])
    made = {r["key"]: r for r in table.to_pylist()}
    missing = [k for k in keys if k not in made]
    if missing:
        raise UserError(
            f"{len(missing)} dataset images have no synthetic caption (first: {missing[0]}): "
            "rerun recaption"
        )
    return {kind: [made[k][kind] for k in keys] for kind in SYNTHETIC}


def reference_captions(
    keys: list[str], rows: dict[str, dict], kinds: Sequence[str]
) -> dict[str, list[str | None]]:
    """The dataset's own short and descriptive caption of every key (a perfect
    captioner: the built-in world writes them from the scene; real data seldom has
    them). Every key needs those of `kinds`, the ones the blend can draw."""
    lacking = [k for k in keys if any(not rows[k][kind] for kind in kinds)]
    if lacking:
        raise UserError(
            f"blend.synthetic_source = 'reference': {len(lacking)} of {len(keys)} dataset "
            f"images have no reference {' or '.join(kinds)} caption (first: {lacking[0]}): "
            "add `short`/`descriptive` columns to the source (data.columns.short and "
            "data.columns.descriptive name them) and rerun ingest, or set "
            "blend.synthetic_source: captioner"
        )
    return {kind: [rows[k][kind] for k in keys] for kind in SYNTHETIC}


def upsampled_captions(keys: list[str]) -> list[str | None]:
    """The upsampler's rewrite of the ground truth of every key."""
    rewrites = pq.read_table(paths.UPSAMPLED_CAPTIONS, columns=["key", "upsampled"])
    by_key = dict(zip(*rewrites.to_pydict().values(), strict=True))
    missing = [k for k in keys if by_key.get(k) is None]
    if missing:
        raise UserError(
            f"blend.use_upsampled: {len(missing)} dataset images have no upsampled caption "
            f"(first: {missing[0]}): rerun upsample_captions"
        )
    return [by_key[k] for k in keys]


def config(params: Params) -> dict:
    """blend.json: the blend's params and the hashes of what it read. The default source,
    the captioner, goes unsaid, so a captioner blend keeps the caption version it had
    before the reference source existed."""
    bp = params.blend
    captioner = bp.synthetic_source == "captioner"
    return {
        **bp.model_dump(exclude={"synthetic_source"} if captioner else None),
        "seed": params.seed,
        "synthetic_captions": lineage.tree_hash(paths.SYNTHETIC_CAPTIONS) if captioner else None,
        "upsampled_captions": lineage.tree_hash(paths.UPSAMPLED_CAPTIONS)
        if bp.use_upsampled
        else None,
        # with the reference source, also where the synthetic captions came from
        "dataset": lineage.tree_hash(paths.DATASET),
    }


def shares(sources: list[str]) -> dict[str, float]:
    counts = Counter(sources)
    return {s: round(counts[s] / len(sources), 6) for s in SOURCES}


def synthetic_share(sources: list[str]) -> float:
    """The share of synthetic captions (short or descriptive, from either source)."""
    return round(sum(s in SYNTHETIC for s in sources) / len(sources), 6)


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    blend = blend_of(params)
    keys = [r["key"] for r in datasets.load_rows(paths.DATASET, [])]
    source = params.blend.synthetic_source
    cands = candidates(keys, blend.upsampled, source, blend.synthetic_kinds)
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
        io.write_json(tmp / paths.BLEND_CONFIG.name, config(params))
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
    log.info("blend: version %s, %s captions, shares %s", report["caption_version"][:12],
             source, report["shares"])  # fmt: skip
    return report

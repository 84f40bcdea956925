"""embed_probe: what the cached embeddings carry, measured by linear probes.

On the synthetic world, logistic-regression probes trained on a seeded sample of
the non-held-out images predict, on the held-out split, the main object's colour,
shape and grid position, the background, how many objects share the main object's
colour and shape, and which glyph is written (on the images that have one; `probe_rows`
gives each probe's rows); once from everything the embedding stores (pooled vector and
grid cells) and once from the pooled vector alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from recaption import datasets, embed, io, paths, sampling
from recaption.metrics import probe
from recaption.params import load_params

log = logging.getLogger(__name__)


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    emb = embed.EmbeddingFolder(paths.IMAGE_EMBEDDINGS)  # the probe's rows alone are read
    dim, grid_dim = emb.widths()
    report = {
        "images": len(emb.keys),
        "dim": dim,
        "grid_dim": grid_dim,
        "clip": emb.clip,
        "probe": None,
        "probe_pooled_only": None,
        "probe_rows": None,
    }
    if params.data.source == "synthetic":
        heldout = datasets.read_splits(paths.SPLITS)["heldout"]
        rest = [k for k in emb.keys if k not in heldout]
        size = min(params.embed.probe_train_size, len(rest))
        train = sorted(sampling.pick(rest, size, params.seed, "probe"))
        test = sorted(heldout)
        rows = datasets.load_rows(paths.DATASET, ["meta"], set(train) | heldout)
        labels = {r["key"]: probe.scene_labels(r["meta"]) for r in rows}
        train_labels, test_labels = [labels[k] for k in train], [labels[k] for k in test]
        for name, read in (
            ("probe", emb.features_of),
            ("probe_pooled_only", lambda keys: emb.vectors_of(keys).astype(np.float32)),
        ):
            report[name], report["probe_rows"] = probe.probe_scores(
                read(train), train_labels, read(test), test_labels
            )
    io.write_json(paths.EMBED_REPORT, report)
    log.info("embed_probe: %s (pooled only: %s)", report["probe"], report["probe_pooled_only"])
    return report

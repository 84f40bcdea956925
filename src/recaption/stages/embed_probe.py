"""embed_probe: what the cached embeddings carry, measured by linear probes.

On the synthetic world, logistic-regression probes trained on a seeded sample of
the non-held-out images predict, on the held-out split, the main object's colour,
shape and grid position and the background; once from everything the embedding
stores (pooled vector and grid cells) and once from the pooled vector alone.
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
    emb = embed.read_dir(paths.IMAGE_EMBEDDINGS)
    report = {
        "images": len(emb.keys),
        "dim": int(emb.vectors.shape[1]),
        "grid_dim": 0 if emb.grid is None else int(emb.grid.shape[1]),
        "clip": emb.clip,
        "probe": None,
        "probe_pooled_only": None,
    }
    if params.data.source == "synthetic":
        heldout = datasets.read_splits(paths.SPLITS)["heldout"]
        rest = [k for k in emb.keys if k not in heldout]
        size = min(params.embed.probe_train_size, len(rest))
        train = sorted(sampling.pick(rest, size, params.seed, "probe"))
        test = sorted(heldout)
        rows = datasets.load_rows(paths.DATASET, ["meta"], set(train) | heldout)
        labels = {r["key"]: probe.scene_labels(r["meta"]) for r in rows}
        index = {k: i for i, k in enumerate(emb.keys)}
        for name, features in (
            ("probe", emb.features()),
            ("probe_pooled_only", emb.vectors.astype(np.float32)),
        ):
            report[name] = {
                attr: round(
                    probe.probe_accuracy(
                        features[[index[k] for k in train]],
                        [labels[k][attr] for k in train],
                        features[[index[k] for k in test]],
                        [labels[k][attr] for k in test],
                    ),
                    4,
                )
                for attr in probe.ATTRIBUTES
            }
    io.write_json(paths.EMBED_REPORT, report)
    log.info("embed_probe: %s (pooled only: %s)", report["probe"], report["probe_pooled_only"])
    return report

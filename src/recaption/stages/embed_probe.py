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
    emb = embed.EmbeddingFolder(paths.IMAGE_EMBEDDINGS)  # the probe's rows alone are read
    dim, grid_dim = emb.widths()
    report = {
        "images": len(emb.keys),
        "dim": dim,
        "grid_dim": grid_dim,
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
        for name, read in (
            ("probe", emb.features_of),
            ("probe_pooled_only", lambda keys: emb.vectors_of(keys).astype(np.float32)),
        ):
            train_x, test_x = read(train), read(test)
            report[name] = {
                attr: round(
                    probe.probe_accuracy(
                        train_x,
                        [labels[k][attr] for k in train],
                        test_x,
                        [labels[k][attr] for k in test],
                    ),
                    4,
                )
                for attr in probe.ATTRIBUTES
            }
    io.write_json(paths.EMBED_REPORT, report)
    log.info("embed_probe: %s (pooled only: %s)", report["probe"], report["probe_pooled_only"])
    return report

"""Linear probes: what a representation carries, read off by logistic regression."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

from recaption.metrics.captions import scene_from_meta
from recaption.world.phrases import group_count

# What the probe reads of a synthetic scene: its main object's colour, shape and place,
# the background, how many objects share the main object's colour and shape (its group,
# as a caption counts it), and the glyph written in the image. Only images that have a
# glyph are probed for it: its label is None where there is none.
ATTRIBUTES = ("colour", "shape", "position", "background", "count", "text")


def scene_labels(meta: str) -> dict[str, str | None]:
    """Probe labels of one synthetic image from its dataset `meta` JSON."""
    scene = scene_from_meta(meta)
    main = scene.main_object
    return {
        "colour": main.colour,
        "shape": main.shape,
        "position": main.position,
        "background": scene.background,
        "count": str(group_count(scene, main.colour, main.shape)),
        "text": scene.text.glyph if scene.text is not None else None,
    }


def probe_accuracy(
    train_x: np.ndarray, train_y: Sequence[str], test_x: np.ndarray, test_y: Sequence[str]
) -> float:
    """Held-out accuracy of a logistic-regression probe (deterministic lbfgs)."""
    clf = LogisticRegression(max_iter=2000, C=10.0)
    clf.fit(np.asarray(train_x, np.float32), list(train_y))
    return float(clf.score(np.asarray(test_x, np.float32), list(test_y)))


def probe_scores(
    train_x: np.ndarray,
    train_labels: Sequence[Mapping[str, str | None]],
    test_x: np.ndarray,
    test_labels: Sequence[Mapping[str, str | None]],
    attributes: Sequence[str] = ATTRIBUTES,
) -> tuple[dict[str, float | None], dict[str, dict[str, int]]]:
    """Each attribute's held-out probe accuracy, and the rows (train, test) it read: those
    whose label is not None. An attribute with fewer than two values among its training
    rows, or no test row, has no probe (None)."""
    scores: dict[str, float | None] = {}
    rows: dict[str, dict[str, int]] = {}
    for attr in attributes:
        tr = [i for i, labels in enumerate(train_labels) if labels[attr] is not None]
        te = [i for i, labels in enumerate(test_labels) if labels[attr] is not None]
        rows[attr] = {"train": len(tr), "test": len(te)}
        train_y = [train_labels[i][attr] for i in tr]
        if len(set(train_y)) < 2 or not te:
            scores[attr] = None
            continue
        test_y = [test_labels[i][attr] for i in te]
        scores[attr] = round(probe_accuracy(train_x[tr], train_y, test_x[te], test_y), 4)
    return scores, rows

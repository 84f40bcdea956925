"""Linear probes: what a representation carries, read off by logistic regression."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

# What the probe reads about the main object of a synthetic scene, and the scene.
ATTRIBUTES = ("colour", "shape", "position", "background")


def scene_labels(meta: str) -> dict[str, str]:
    """Probe labels of one synthetic image from its dataset `meta` JSON."""
    scene = json.loads(meta)["scene"]
    main = scene["objects"][scene["main"]]
    return {
        "colour": main["colour"],
        "shape": main["shape"],
        "position": main["position"],
        "background": scene["background"],
    }


def probe_accuracy(
    train_x: np.ndarray, train_y: Sequence[str], test_x: np.ndarray, test_y: Sequence[str]
) -> float:
    """Held-out accuracy of a logistic-regression probe (deterministic lbfgs)."""
    clf = LogisticRegression(max_iter=2000, C=10.0)
    clf.fit(np.asarray(train_x, np.float32), list(train_y))
    return float(clf.score(np.asarray(test_x, np.float32), list(test_y)))

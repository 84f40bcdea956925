"""CLIP score: how well a text matches an image under a CLIP, in both conventions in use.

- CLIPScore (Hessel et al. 2021): 2.5 * max(cos, 0), reference-free; the 2.5 stretches
  its usual range towards [0, 1];
- 100 * cos, as the DALL-E 3 study reports it.
"""

from __future__ import annotations

import numpy as np


def clip_scores(cos: np.ndarray) -> dict[str, float]:
    """Mean CLIP score in both conventions: 2.5 * max(cos, 0) and 100 * cos."""
    return {
        "clipscore": round(float(np.mean(2.5 * np.maximum(cos, 0))), 4),
        "cos100": round(float(np.mean(100 * cos)), 3),
    }


def paired_cosines(images: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """(N,) cosine of each L2-normalised image embedding (N, D) with its own text's (N, D)."""
    return (images * texts).sum(-1)

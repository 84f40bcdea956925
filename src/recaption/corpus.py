"""Pretraining corpora of the built-in world: fresh renders that a model trains on
beside the dataset, as a real CLIP or autoencoder has seen far more images than one
dataset holds. Each corpus has its own seed, never the dataset's or the evaluation's."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from recaption import images
from recaption.world import Example, WorldConfig, make_example


def fresh_renders(
    cfg: WorldConfig, n: int, seed: int, size: int, desc: str
) -> tuple[torch.Tensor, list[Example]]:
    """`n` fresh renders of the world `cfg` seeded by `seed`, fitted to `size` pixels:
    uint8 (n, 3, size, size), and the examples behind them (scenes and captions)."""
    out = torch.empty((n, 3, size, size), dtype=torch.uint8)
    examples = []
    for i in tqdm(range(n), desc=desc, unit="img", mininterval=2):
        ex = make_example(seed, i, cfg)
        out[i] = pixels_of(ex.image, size)
        examples.append(ex)
    return out, examples


def pixels_of(image: Image.Image, size: int) -> torch.Tensor:
    """uint8 (3, size, size): a render fitted to `size` pixels."""
    return torch.from_numpy(np.array(images.fit(image, size))).permute(2, 0, 1)

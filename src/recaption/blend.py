"""Blended relabeling: which caption each image trains the generator with.

Each image keeps a synthetic caption with probability `ratio` and its ground
truth otherwise (the study's 95 % blend keeps the generator used to the short,
plain text people type). Every draw is a seeded hash of the key, so:

- an image's fate does not depend on the other images (adding images changes no
  earlier choice);
- raising the ratio only moves images from ground truth to synthetic: the images
  synthetic at 0.80 are synthetic at 0.95 too;
- "per_epoch" mode redraws with the epoch in the hash, reproducibly.

With kind "mixed", a synthetic image gets its short caption with probability
`short_fraction`, its descriptive one otherwise. With `upsampled`, an image that
does not draw a synthetic caption gets the upsampler's rewrite of its ground truth
instead of the ground truth itself; the draws themselves do not change.

Where the synthetic captions come from (the trained captioner, or the dataset's
reference captions: a perfect captioner) is the caller's business: the draws do
not depend on it, so the same images are synthetic whichever source fills them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

SOURCES = ("ground_truth", "short", "descriptive", "upsampled")
SYNTHETIC = ("short", "descriptive")  # the captioner's, or the reference captions


def uniform(seed: int, salt: str, key: str, epoch: int | None = None) -> float:
    """A seeded, order-free draw in [0, 1) for one key (53 bits of a sha256)."""
    tag = "" if epoch is None else f"\x1f{epoch}"
    digest = hashlib.sha256(f"{seed}\x1f{salt}{tag}\x1f{key}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2**53


@dataclass(frozen=True)
class Blend:
    ratio: float  # probability of a synthetic caption
    kind: Literal["descriptive", "short", "mixed"] = "descriptive"
    short_fraction: float = 0.5  # mixed: share of synthetic captions that are short
    mode: Literal["static", "per_epoch"] = "static"
    seed: int = 0
    upsampled: bool = False  # the ground truth's slot takes its upsampled rewrite

    @property
    def synthetic_kinds(self) -> tuple[str, ...]:
        """The synthetic captions this blend can give an image (whatever the ratio)."""
        return SYNTHETIC if self.kind == "mixed" else (self.kind,)

    def source(self, key: str, epoch: int = 0) -> str:
        """Which caption `key` trains with: one of `SOURCES`.

        In static mode the epoch is ignored: the choice is fixed per image.
        """
        e = epoch if self.mode == "per_epoch" else None
        if uniform(self.seed, "blend", key, e) >= self.ratio:
            return "upsampled" if self.upsampled else "ground_truth"
        if self.kind != "mixed":
            return self.kind
        short = uniform(self.seed, "blend-kind", key, e) < self.short_fraction
        return "short" if short else "descriptive"

    def captions(
        self, keys: Sequence[str], candidates: dict[str, Sequence[str]], epoch: int = 0
    ) -> tuple[list[str], list[str]]:
        """(caption, source) of every key; `candidates` maps each source to a caption per key."""
        sources = [self.source(k, epoch) for k in keys]
        return [candidates[s][i] for i, s in enumerate(sources)], sources


def binomial_bounds(n: int, p: float, z: float = 3.29) -> tuple[float, float]:
    """The share of n draws of probability p expected within z standard deviations
    (z = 3.29: a 99.9 % two-sided normal interval), clipped to [0, 1]."""
    half = z * (p * (1 - p) / n) ** 0.5 if n else 0.0
    return max(0.0, p - half), min(1.0, p + half)

"""Pick the captioner-tuning subset, its two parts, and a held-out split.

Keys are ranked by a seeded hash of the key, not by a random permutation of the
dataset: the choice for a key does not depend on which other keys exist, so a
dataset that grows keeps most of its subset, and the same seed always gives the
same split.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from recaption.errors import UserError


class SampleError(UserError, ValueError):
    """The requested split cannot be drawn from this dataset."""


@dataclass(frozen=True)
class Split:
    """Membership of every dataset key, in the order of `keys`."""

    keys: list[str]
    first: list[bool]
    second: list[bool]
    heldout: list[bool]

    def summary(self) -> dict:
        both = sum(a and b for a, b in zip(self.first, self.second, strict=True))
        return {
            "dataset": len(self.keys),
            "first": sum(self.first),
            "second": sum(self.second),
            "both": both,
            "subset": sum(a or b for a, b in zip(self.first, self.second, strict=True)),
            "heldout": sum(self.heldout),
        }


def rank(key: str, seed: int, salt: str) -> str:
    """A seeded, order-free rank for a key: sort keys by it to shuffle them."""
    return hashlib.sha256(f"{seed}\x1f{salt}\x1f{key}".encode()).hexdigest()


def pick(
    candidates: Sequence[str], k: int, seed: int, salt: str, strata: dict[str, str] | None = None
) -> list[str]:
    """The first `k` candidates by seeded rank; with `strata`, allocated proportionally.

    Proportional allocation uses largest remainders (ties broken by stratum name),
    so every stratum gets round(k * share) or one less, and the total is exactly k.
    """
    if k > len(candidates):
        raise SampleError(f"asked for {k} keys from {len(candidates)}")
    ordered = sorted(candidates, key=lambda key: rank(key, seed, salt))
    if not strata:
        return ordered[:k]
    groups: dict[str, list[str]] = defaultdict(list)
    for key in ordered:
        groups[strata[key]].append(key)
    n = len(candidates)
    quotas = {name: k * len(members) / n for name, members in groups.items()}
    counts = {name: int(q) for name, q in quotas.items()}
    by_remainder = sorted(groups, key=lambda name: (-(quotas[name] - counts[name]), name))
    for name in by_remainder[: k - sum(counts.values())]:
        counts[name] += 1
    return [key for name in sorted(groups) for key in groups[name][: counts[name]]]


def draw_split(
    keys: Sequence[str],
    seed: int,
    size: int,
    overlap: float,
    heldout_size: int,
    strata: dict[str, str] | None = None,
) -> Split:
    """Draw the held-out split, then the two parts of the subset from what remains.

    Args:
        size: images in each part.
        overlap: fraction of the second part that is also in the first (1.0: the same images).
        heldout_size: images held out for evaluation, disjoint from both parts.
    """
    shared = round(overlap * size)
    needed = heldout_size + 2 * size - shared
    if needed > len(keys):
        raise SampleError(
            f"sample needs {needed} images (heldout_size {heldout_size} + 2 x size {size} "
            f"- shared {shared}) but the dataset has {len(keys)}; lower sample.size or "
            "sample.heldout_size, or raise sample.overlap"
        )
    heldout = set(pick(keys, heldout_size, seed, "heldout", strata))
    rest = [key for key in keys if key not in heldout]
    first = pick(rest, size, seed, "first", strata)
    first_set = set(first)
    second = set(pick(first, shared, seed, "shared", strata))
    fresh = [key for key in rest if key not in first_set]
    second |= set(pick(fresh, size - shared, seed, "second", strata))
    return Split(
        keys=list(keys),
        first=[key in first_set for key in keys],
        second=[key in second for key in keys],
        heldout=[key in heldout for key in keys],
    )

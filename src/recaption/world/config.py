"""Configuration of the synthetic world, validated once on construction."""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .vocab import POSITIONS

# Alt-text kinds, in the fixed order used when sampling (order matters for determinism).
ALT_KINDS: tuple[str, ...] = ("off_topic", "partial", "good")
DEFAULT_ALT_MIX: dict[str, float] = {"off_topic": 0.4, "partial": 0.4, "good": 0.2}


def _default_mix() -> Mapping[str, float]:
    return dict(DEFAULT_ALT_MIX)


def _check_probability(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def validate_alt_mix(mix: Mapping[str, float], name: str = "alt_mix") -> None:
    """Raise ValueError unless `mix` maps known alt-text kinds to probabilities summing to 1."""
    unknown = set(mix) - set(ALT_KINDS)
    if unknown:
        raise ValueError(f"{name} has unknown kinds {sorted(unknown)}; allowed: {list(ALT_KINDS)}")
    for kind, p in mix.items():
        _check_probability(f"{name}.{kind}", p)
    total = sum(mix.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(f"{name} must sum to 1 (within 1e-6), got {total!r}")


@dataclass(frozen=True)
class WorldConfig:
    """How scenes, images and alt-text are sampled.

    Attributes:
        image_size: side of the square RGB image in pixels.
        min_objects, max_objects: inclusive range of objects per scene (1..9).
        text_probability: chance that a letter or digit is drawn in a free cell.
        repeat_probability: chance that extra objects copy the main object's shape
            and colour, so counting ("three blue squares") is learnable.
        alt_mix: probability of each alt-text kind ("off_topic", "partial", "good");
            missing kinds get probability 0.
    """

    image_size: int = 32
    min_objects: int = 1
    max_objects: int = 4
    text_probability: float = 0.3
    repeat_probability: float = 0.3
    alt_mix: Mapping[str, float] = field(default_factory=_default_mix)

    def __post_init__(self) -> None:
        _check_int("image_size", self.image_size, 8, 4096)
        _check_int("min_objects", self.min_objects, 1, len(POSITIONS))
        _check_int("max_objects", self.max_objects, 1, len(POSITIONS))
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"min_objects ({self.min_objects}) must not exceed max_objects ({self.max_objects})"
            )
        _check_probability("text_probability", self.text_probability)
        _check_probability("repeat_probability", self.repeat_probability)
        if not isinstance(self.alt_mix, Mapping):
            raise ValueError(f"alt_mix must map kind -> probability, got {self.alt_mix!r}")
        validate_alt_mix(self.alt_mix)
        # Read-only copy: the dataclass is frozen, its mix should be too.
        full = {kind: float(self.alt_mix.get(kind, 0.0)) for kind in ALT_KINDS}
        object.__setattr__(self, "alt_mix", types.MappingProxyType(full))

    def __reduce__(self):
        # Worker processes receive the config by pickle; a mappingproxy cannot be pickled.
        return (type(self), tuple(self.to_dict().values()))

    def __hash__(self) -> int:
        # The generated hash would fail on the mapping; hash its items instead.
        fields = self.to_dict()
        fields["alt_mix"] = tuple(sorted(fields["alt_mix"].items()))
        return hash(tuple(fields.items()))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form; `WorldConfig(**cfg.to_dict())` round-trips."""
        return {
            "image_size": self.image_size,
            "min_objects": self.min_objects,
            "max_objects": self.max_objects,
            "text_probability": self.text_probability,
            "repeat_probability": self.repeat_probability,
            "alt_mix": dict(self.alt_mix),
        }

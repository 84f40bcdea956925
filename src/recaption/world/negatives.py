"""Hard negatives for contrastive training: a caption with one word swapped.

NegCLIP (Yuksekgonul et al. 2023) contrasts each image with its own caption made
wrong in one detail, so a CLIP cannot match image and caption on the easy parts
alone (in this world: colour, background and place pick out an image within a batch
without its shapes). Here one shape or colour word of the world's vocabulary is
replaced by another of the same kind, plural kept.
"""

from __future__ import annotations

import random
import re

from .vocab import COLOUR_NAMES, SHAPE_PLURALS, SHAPES, alternation

_PLURAL_TO_SHAPE = {plural: shape for shape, plural in SHAPE_PLURALS.items()}
_WORDS = re.compile(
    rf"\b({alternation([*SHAPES, *SHAPE_PLURALS.values(), *COLOUR_NAMES])})\b", re.IGNORECASE
)


def _other(word: str, rng: random.Random) -> str:
    lower = word.lower()
    if lower in COLOUR_NAMES:
        swapped = rng.choice([c for c in COLOUR_NAMES if c != lower])
    elif lower in _PLURAL_TO_SHAPE:
        shape = _PLURAL_TO_SHAPE[lower]
        swapped = SHAPE_PLURALS[rng.choice([s for s in SHAPES if s != shape])]
    else:
        swapped = rng.choice([s for s in SHAPES if s != lower])
    return swapped.capitalize() if word[:1].isupper() else swapped


def swap_word(text: str, rng: random.Random) -> str | None:
    """`text` with one of its shape or colour words (picked by `rng`) replaced by
    another of the same kind; None when it names no shape or colour."""
    found = list(_WORDS.finditer(text))
    if not found:
        return None
    m = found[rng.randrange(len(found))]
    return text[: m.start()] + _other(m.group(0), rng) + text[m.end() :]

"""Is an upsampled prompt faithful to the short one? Facts kept, facts contradicted.

Facts are read with the built-in world's parser (`world.parse`). A fact of the short
text is kept when the upsampled text states it too. The upsampled text contradicts
the short one when it states, for the same thing, another value: another count of
the same coloured shape, only other positions for it, another background, another
glyph of written text.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from recaption.world.parse import Fact, parse_caption


def _by_kind(facts: set[Fact]) -> dict[tuple, set]:
    """What each fact says, keyed by what it is about."""
    out: dict[tuple, set] = defaultdict(set)
    for fact in facts:
        kind = fact[0]
        if kind in ("count", "position"):
            out[(kind, fact[1], fact[2])].add(fact[3])
        elif kind in ("background", "text"):
            out[(kind,)].add(fact[1])
    return out


def contradictions(short: set[Fact], upsampled: set[Fact]) -> set[tuple]:
    """The subjects (count/position of a coloured shape, background, text) on which
    `upsampled` states only values that `short` does not."""
    said, rewritten = _by_kind(short), _by_kind(upsampled)
    return {
        about for about, values in said.items() if rewritten.get(about, values) & values == set()
    }


def faithfulness(shorts: Sequence[str], upsampled: Sequence[str]) -> dict[str, Any]:
    """Fact-level faithfulness of each rewrite to its short text.

    Returns:
        kept: facts of the short texts stated by their rewrites, over all of them;
        contradicted: share of rewrites that contradict their short text;
        all_kept: share of rewrites that keep every fact; mean word counts of both.
    """
    if len(shorts) != len(upsampled):
        raise ValueError(f"{len(shorts)} short texts but {len(upsampled)} rewrites")
    stated = kept = whole = contradicted = 0
    for short, long in zip(shorts, upsampled, strict=True):
        facts, rewritten = parse_caption(short), parse_caption(long)
        stated += len(facts)
        kept += len(facts & rewritten)
        whole += facts <= rewritten
        contradicted += bool(contradictions(facts, rewritten))
    n = max(len(shorts), 1)
    return {
        "prompts": len(shorts),
        "facts_stated": stated,
        "kept": round(kept / stated, 4) if stated else None,
        "all_kept": round(whole / n, 4),
        "contradicted": round(contradicted / n, 4),
        "mean_words_short": round(sum(len(s.split()) for s in shorts) / n, 2),
        "mean_words_upsampled": round(sum(len(u.split()) for u in upsampled) / n, 2),
    }

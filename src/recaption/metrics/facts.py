"""Fact accuracy: graded prompt following, judged fact by fact (TIFA / Davidsonian Scene Graph).

GenEval's rules (`recaption.metrics.geneval`) give an image 1 or 0. Here a prompt's
`demands` (see `recaption.world.prompts`) are split into atomic facts, each with the
facts it presupposes (its parents), and an image scores the share of facts it gets
right. For each demanded object:

- presence: at least one object of its shape (a root);
- colour, where demanded: at least one of that shape in that colour (parent: presence);
- count, where a number is stated (count >= 2): exactly that many (parent: presence);
  "a circle" states no count, as in GenEval;
- position, for each grid position the demands name (optional key "positions"): one
  of them in that cell (parent: presence).

Then the relation between object 0 and object 1 (parents: both presences), judged as
GenEval does on grid cells, and the background where the demands name one (a root).
A fact whose parent fails fails too: "is the circle red?" has no answer without a
circle.

Which detected objects a demand refers to: those of its shape and colour, or, when
none has the colour, all of its shape. So three red squares for "three blue squares"
lose the colour fact only, while with three blue squares and one red the count of blue
squares is right. With every colour right this is GenEval's matching, so on the suite
an image scores 1.0 exactly when GenEval says it follows the prompt.

Scores are averaged over a prompt's images first, then over prompts; the 95 % interval
is a seeded bootstrap over prompts (within each category, when a score is a mean over
categories).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# GenEval's relation tests, shared so that both metrics judge a relation alike.
from recaption.metrics.geneval import _RELATIONS
from recaption.world import POSITIONS, Scene, parse_caption, scene_facts
from recaption.world.vocab import SHAPE_PLURALS

Detection = Mapping[str, Any]


@dataclass(frozen=True)
class Fact:
    """One checkable statement of a prompt.

    `kind` is object | colour | count | position | relation | background; `args` what it
    checks (see `_CHECKS`); `parents` the ids of the facts it presupposes.
    """

    id: str
    kind: str
    text: str
    args: tuple
    parents: tuple[str, ...] = ()


def _matches(detection: Detection, shape: str, colour: str | None) -> list[Mapping[str, Any]]:
    return [
        o for o in detection["objects"] if o["shape"] == shape and colour in (None, o["colour"])
    ]


def _referents(detection: Detection, shape: str, colour: str | None) -> list:
    """The objects a demand refers to: its shape and colour, else any of its shape (a wrong
    colour is charged to the colour fact alone)."""
    return _matches(detection, shape, colour) or _matches(detection, shape, None)


def _related(detection: Detection, a: tuple, relation: str, b: tuple) -> bool:
    firsts, seconds = _referents(detection, *a), _referents(detection, *b)
    test = _RELATIONS[relation]
    return any(test(x, y) for x in firsts for y in seconds if x is not y)


def _at(detection: Detection, shape: str, colour: str | None, cell: tuple[int, int]) -> bool:
    return any((o["row"], o["col"]) == cell for o in _referents(detection, shape, colour))


_CHECKS = {
    "object": lambda d, shape: bool(_matches(d, shape, None)),
    "colour": lambda d, shape, colour: bool(_matches(d, shape, colour)),
    "count": lambda d, shape, colour, n: len(_referents(d, shape, colour)) == n,
    "position": _at,
    "relation": _related,
    "background": lambda d, name: d["background"] == name,
}


def _noun(shape: str, colour: str | None) -> str:
    return f"{colour} {shape}" if colour else shape


def _object_facts(i: int, demand: Mapping[str, Any]) -> list[Fact]:
    shape, colour, count = demand["shape"], demand.get("colour"), demand.get("count", 1)
    root = f"object {i}"
    facts = [Fact(root, "object", f"a {shape}", (shape,))]
    if colour is not None:
        facts.append(Fact(f"{root}: colour", "colour", f"a {colour} {shape}", (shape, colour),
                          (root,)))  # fmt: skip
    if count > 1:
        text = f"exactly {count} {_noun(SHAPE_PLURALS[shape], colour)}"
        facts.append(Fact(f"{root}: count", "count", text, (shape, colour, count), (root,)))
    for name in demand.get("positions", ()):
        if name not in POSITIONS:
            raise ValueError(f"unknown position {name!r}; known: {list(POSITIONS)}")
        facts.append(Fact(f"{root}: at {name}", "position", f"a {_noun(shape, colour)} at {name}",
                          (shape, colour, POSITIONS[name]), (root,)))  # fmt: skip
    return facts


def decompose(demands: Mapping[str, Any]) -> list[Fact]:
    """The atomic facts of a prompt's demands, every parent before its children.

    Args:
        demands: {"objects": [{"shape", "colour" (or None), "count", optional
            "positions": [position names]}], "relation": None or how object 0 stands to
            object 1, optional "background": a background name}.
    """
    objects = demands["objects"]
    facts = [f for i, d in enumerate(objects) for f in _object_facts(i, d)]
    relation = demands.get("relation")
    if relation is not None:
        if relation not in _RELATIONS:
            raise ValueError(f"unknown relation {relation!r}; known: {list(_RELATIONS)}")
        a, b = ((d["shape"], d.get("colour")) for d in objects[:2])
        text = f"a {_noun(*a)} {relation} a {_noun(*b)}"
        facts.append(Fact("relation", "relation", text, (a, relation, b), ("object 0", "object 1")))
    if demands.get("background") is not None:
        name = demands["background"]
        facts.append(Fact("background", "background", f"a {name} background", (name,)))
    return facts


def verdicts(detection: Detection | None, demands: Mapping[str, Any]) -> list[tuple[Fact, bool]]:
    """Each fact of `demands` with whether `detection` satisfies it (and all its parents).

    Returns [] when there is no detection (no oracle: nothing to score).
    """
    if detection is None:
        return []
    judged: list[tuple[Fact, bool]] = []
    held: dict[str, bool] = {}
    for fact in decompose(demands):  # parents first, so one pass propagates failures
        parents_hold = all(held[p] for p in fact.parents)
        held[fact.id] = parents_hold and _CHECKS[fact.kind](detection, *fact.args)
        judged.append((fact, held[fact.id]))
    return judged


def fact_accuracy(detection: Detection | None, demands: Mapping[str, Any]) -> float | None:
    """Share of the prompt's facts that `detection` satisfies; None when there is no
    detection or the demands state no fact."""
    judged = verdicts(detection, demands)
    if not judged:
        return None
    return sum(held for _, held in judged) / len(judged)


def caption_demands(caption: str, scene: Scene) -> dict[str, Any]:
    """Demands of a caption of `scene`: what the caption states (as `parse_caption` reads
    it) that is true of the scene, in the suite's form plus positions and background.

    Glyph facts are left out: the oracle finds a glyph's cell, not which glyph it is.
    """
    stated = parse_caption(caption) & scene_facts(scene)
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for fact in sorted(f for f in stated if f[0] == "object"):
        _, colour, shape = fact
        groups[(colour, shape)] = {"shape": shape, "colour": colour, "count": 1, "positions": []}
    for fact in sorted(f for f in stated if f[0] in ("count", "position")):
        group = groups.get((fact[1], fact[2]))
        if group is None:  # a count or position of an object the parser did not name
            continue
        if fact[0] == "count":
            group["count"] = fact[3]
        else:
            group["positions"].append(fact[3])
    backgrounds = [f[1] for f in stated if f[0] == "background"]
    return {
        "objects": list(groups.values()),
        "relation": None,
        "background": backgrounds[0] if backgrounds else None,
    }


# ---- averaging and the bootstrap interval ------------------------------------------------

# One stratum: item (prompt) id -> the scores of its images.
Stratum = Mapping[str, Sequence[float]]


def _item_means(stratum: Stratum) -> np.ndarray:
    """(items,) each item's mean over its images, items in sorted order."""
    if not stratum:
        raise ValueError("a stratum with no items has no mean")
    return np.array([np.mean(stratum[k]) for k in sorted(stratum)])


def stratified_mean(strata: Sequence[Stratum]) -> float:
    """Mean over strata of the mean over items of each item's mean over images."""
    return float(np.mean([_item_means(s).mean() for s in strata]))


def bootstrap_interval(
    strata: Sequence[Stratum], resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of `stratified_mean`: items (prompts) are resampled
    with replacement within each stratum (category), images stay with their item.

    Deterministic: `np.random.default_rng(seed)`, strata in the order given.
    """
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)  # (resamples,)
    for stratum in strata:
        means = _item_means(stratum)  # (items,)
        picks = rng.integers(0, len(means), size=(resamples, len(means)))  # (resamples, items)
        total += means[picks].mean(1)
    lo, hi = np.quantile(total / len(strata), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)

"""Prompt following in GenEval's categories, judged on what the oracle detected.

A prompt's `demands` (see `recaption.world.prompts`) list objects by shape,
optional colour and count, and for the position category how object 0 stands
to object 1. The rules follow GenEval's:

- counting: exactly `count` objects of that shape and colour;
- every other category: at least one object of each demanded shape (and colour,
  where one is demanded);
- position: some object matching the first demand stands in the demanded
  relation to some object matching the second, judged by grid cells ("left of":
  a smaller column; "above": a smaller row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_RELATIONS = {
    "left of": lambda a, b: a["col"] < b["col"],
    "right of": lambda a, b: a["col"] > b["col"],
    "above": lambda a, b: a["row"] < b["row"],
    "below": lambda a, b: a["row"] > b["row"],
}


def _matches(objects: Sequence[Mapping[str, Any]], demand: Mapping[str, Any]) -> list:
    return [
        o
        for o in objects
        if o["shape"] == demand["shape"] and demand.get("colour") in (None, o["colour"])
    ]


def follows(detection: Mapping[str, Any], demands: Mapping[str, Any], category: str) -> bool:
    """Whether an image whose oracle detection is `detection` satisfies `demands`."""
    objects = detection["objects"]
    found = [_matches(objects, d) for d in demands["objects"]]
    for demand, hits in zip(demands["objects"], found, strict=True):
        count = demand.get("count", 1)
        if len(hits) != count if category == "counting" else len(hits) < count:
            return False
    relation = demands.get("relation")
    if relation is None:
        return True
    if relation not in _RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; known: {list(_RELATIONS)}")
    test = _RELATIONS[relation]
    return any(test(a, b) for a in found[0] for b in found[1] if a is not b)

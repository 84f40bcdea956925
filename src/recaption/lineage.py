"""The `lineage.json` every model folder carries, and its model card.

A lineage records what a model was made from: the content hash of each input
(dataset, caption sets, parent model; `tree_hash`, from the library's `recaption.io`)
and the params used, so the chain "which captions trained which model" can be read
back and checked against disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recaption import cards, io
from recaption.io import CARD_NAME, LINEAGE_NAME, tree_hash


def write_lineage(
    folder: str | Path,
    stage: str,
    inputs: dict[str, str | Path],
    params: dict[str, Any],
    **extra: Any,
) -> dict:
    """Write `folder/lineage.json` (the stage, each input's path and hash, the params and
    any `extra` such as metrics) and the model card `folder/README.md` from it."""
    record = {
        "stage": stage,
        "inputs": {name: {"path": str(p), "sha256": tree_hash(p)} for name, p in inputs.items()},
        "params": params,
        **extra,
    }
    io.write_json(Path(folder) / LINEAGE_NAME, record)
    (Path(folder) / CARD_NAME).write_text(cards.render(record))
    return record


def read_lineage(folder: str | Path) -> dict:
    """The `lineage.json` of a model folder ({} when it has none)."""
    path = Path(folder) / LINEAGE_NAME
    return json.loads(path.read_text()) if path.is_file() else {}

"""Content hashes of inputs and the `lineage.json` every model folder carries.

A lineage records what a model was made from: the content hash of each input
(dataset, caption sets, parent model) and the params used, so the chain
"which captions trained which model" can be read back and checked against disk.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from recaption import cards, io

LINEAGE_NAME = "lineage.json"
CARD_NAME = "README.md"  # the model card, from the same record


def tree_hash(path: str | Path) -> str:
    """sha256 of a file, or of a folder's relative paths and file hashes (sorted).

    Hidden files and folders are ignored, so an atomic writer's leftovers never count;
    so is a model folder's card (README.md beside lineage.json): it is written from the
    lineage record, so it says nothing the hash does not already cover.
    """
    path = Path(path)
    if path.is_file():
        return io.sha256_file(path)
    digest = hashlib.sha256()
    card = path / CARD_NAME if (path / LINEAGE_NAME).is_file() else None
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or file == card:
            continue
        digest.update(f"{rel.as_posix()}\0{io.sha256_file(file)}\n".encode())
    return digest.hexdigest()


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

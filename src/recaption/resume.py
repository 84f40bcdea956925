"""Where a training stage keeps the checkpoint a killed run resumes from.

data/.work/<stage>/<key>/: the key hashes what the run is a function of (its starting
weights, the data it trains on, its training config, the resolved precision and
hardware), so a run never resumes one made from other params or upstream data. It is
taken from those objects, not from params, so keying reads no params key a stage does
not declare. The library's loop (`recaption.models.training.fit`) writes and reads the
checkpoint; the stage removes the folder once its outputs are written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from recaption import paths
from recaption.models.training import Checkpoints

PER_RUN = 10  # checkpoints a run writes: a kill loses at most a tenth of it


def checkpoints(
    stage: str, identity: Sequence[Any], compute: dict | None, steps: int, clean: bool = True
) -> Checkpoints:
    """This run's checkpoint folder (see `folder`) and interval: `PER_RUN` per run.

    Args:
        steps: the run's optimizer steps.
    """
    return Checkpoints(folder(stage, identity, compute, clean), max(1, steps // PER_RUN))


def folder(stage: str, identity: Sequence[Any], compute: dict | None, clean: bool = True) -> Path:
    """This run's checkpoint folder; with `clean`, other runs' leftovers under the stage's
    folder are removed (what they hold can never be resumed).

    Args:
        identity: what the run is a function of: modules (their starting weights),
            tensors, and anything JSON writes (captions, a config dataclass).
        compute: the resolved precision and hardware (`precision.settle`'s record).
    """
    root = paths.WORK / stage
    mine = root / digest([*identity, compute])[:16]
    if clean and root.is_dir():
        for other in root.iterdir():
            if other != mine:
                shutil.rmtree(other, ignore_errors=True)
    return mine


def finish(stage: str) -> None:
    """Remove the stage's checkpoints: its outputs are written."""
    shutil.rmtree(paths.WORK / stage, ignore_errors=True)


def digest(parts: Sequence[Any]) -> str:
    """sha256 of `parts`: a tensor by its dtype, shape and bytes, a module by its state,
    a dict of tensors name by name, anything else as JSON."""
    h = hashlib.sha256()
    for part in parts:
        _feed(h, part)
    return h.hexdigest()


def _feed(h: Any, part: Any) -> None:
    if isinstance(part, torch.nn.Module):
        part = part.state_dict()
    if dataclasses.is_dataclass(part):
        part = dataclasses.asdict(part)
    if isinstance(part, dict) and part and all(torch.is_tensor(v) for v in part.values()):
        for name in sorted(part):
            h.update(name.encode())
            _feed(h, part[name])
    elif torch.is_tensor(part):
        flat = part.detach().cpu().contiguous().flatten()
        h.update(f"{flat.dtype}{tuple(part.shape)}".encode())
        h.update(flat.view(torch.uint8).numpy().tobytes())
    else:
        h.update(json.dumps(part, sort_keys=True).encode())

"""Where a training stage keeps the checkpoint a killed run resumes from.

data/.work/<stage>/<key>/: the key hashes everything the training depends on (the whole
params, the contents of the stage's inputs, the resolved precision and hardware), so a
run never resumes one made from other params or upstream data. The library's loop
(`recaption.models.training.fit`) writes and reads the checkpoint; the stage removes the
folder once its outputs are written.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from recaption import io, paths
from recaption.models.training import Checkpoints
from recaption.params import Params

PER_RUN = 10  # checkpoints a run writes: a kill loses at most a tenth of it


def checkpoints(
    stage: str,
    params: Params,
    inputs: Sequence[Path],
    compute: dict | None,
    steps: int,
    clean: bool = True,
) -> Checkpoints:
    """This run's checkpoint folder and interval; with `clean`, other runs' leftovers
    under the stage's folder are removed (what they hold can never be resumed).

    Args:
        inputs: the files and folders the stage trains from (hashed by content).
        compute: the resolved precision and hardware (`precision.settle`'s record).
        steps: the run's optimizer steps.
    """
    key = {
        "params": params.model_dump(mode="json"),
        "inputs": {str(p): io.tree_hash(p) if p.exists() else None for p in inputs},
        "compute": compute,
    }
    root = paths.WORK / stage
    folder = root / io.sha256_bytes(json.dumps(key, sort_keys=True).encode())[:16]
    if clean and root.is_dir():
        for other in root.iterdir():
            if other != folder:
                shutil.rmtree(other, ignore_errors=True)
    return Checkpoints(folder, max(1, steps // PER_RUN))


def finish(stage: str) -> None:
    """Remove the stage's checkpoints: its outputs are written."""
    shutil.rmtree(paths.WORK / stage, ignore_errors=True)

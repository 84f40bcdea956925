"""What `make clean` removes: every output dvc.yaml declares, the resumable work and the
caches (a frozen text encoder's states).

The outputs are read from dvc.yaml, so a new stage's outputs are cleaned without an
edit here. Kept: the inputs (data/raw, params.yaml, configs/), the virtual environment
and the DVC cache, from which `dvc checkout` restores any output a commit recorded.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from recaption import paths

KEPT = ("data/raw", "params.yaml", "configs/", ".venv", ".dvc/cache")


def outputs(dvc_yaml: Path) -> list[Path]:
    """Every `outs` path of every stage of `dvc_yaml` (relative to its folder), in order."""
    stages = yaml.safe_load(dvc_yaml.read_text()).get("stages", {})
    found: list[Path] = []
    for stage in stages.values():
        for out in stage.get("outs", []):
            name = out if isinstance(out, str) else next(iter(out))
            path = dvc_yaml.parent / name
            if path not in found:
                found.append(path)
    return found


def clean(root: Path, dry_run: bool = False) -> list[Path]:
    """Remove the outputs of root/dvc.yaml, root's resumable work and caches; the paths
    removed."""
    targets = [*outputs(root / "dvc.yaml"), root / paths.WORK, root / paths.CACHE]
    removed = [p for p in targets if p.exists() or p.is_symlink()]
    if not dry_run:
        for path in removed:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    return removed

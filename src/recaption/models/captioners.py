"""Any saved captioner folder, whatever its kind: a prefix captioner (models/captioner.py)
or a vision-language one (models/vlm.py), told apart by the files it holds."""

from __future__ import annotations

from pathlib import Path

import torch

from recaption.models import captioner, vlm
from recaption.models.captioner import Captioner


def load(folder: str | Path, dtype: torch.dtype = torch.float32) -> Captioner:
    """The captioner saved in `folder`, its weights in `dtype` (safetensors only)."""
    if vlm.is_vlm(folder):
        return vlm.load(folder, dtype)
    return captioner.load(folder, dtype)

"""Which torch device a stage runs on."""

from __future__ import annotations

import torch

from recaption.errors import UserError


def resolve(device: str, key: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; a named device is checked.

    Args:
        device: "auto", "cpu" or "cuda", as given in params.
        key: the params key it came from, named in the error.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key} is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return device

"""Which torch device a stage runs on, and what that means for reproducibility.

On the CPU every stage is exact: the same inputs give the same output bytes, which is
what lets DVC skip everything below an unchanged output. On CUDA some kernels are not
bit-reproducible (atomic adds in scatter and index_add, cuBLAS split-K reductions,
cuDNN algorithm choice), so a rerun may differ in the last bits of a float and DVC
then reruns the stages below. `resolve` asks cuDNN for deterministic algorithms and
says so in the log; it does not force `torch.use_deterministic_algorithms`, which
would make some ops raise instead.
"""

from __future__ import annotations

import logging

import torch

from recaption.errors import UserError

log = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")


def resolve(device: str, key: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; a named device is checked.
    Every stage, and `recap generate`, picks its device here.

    Args:
        device: "auto", "cpu" or "cuda", as given in params (or on the command line).
        key: the params key (or option) it came from, named in the error.
    """
    if device not in DEVICES:
        raise UserError(f"{key} is {device!r}; use one of {', '.join(DEVICES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key} is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if device == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        log.info("%s: cuda; outputs may differ in the last bits between runs", key)
    return device

"""Safe model loading: the pipeline reads safetensors only.

A pickled checkpoint (.bin, .pt, .pth, .ckpt, .pkl) runs whatever code it carries when
it is unpickled, so one from an untrusted source can take over the machine. The
pipeline refuses them wherever a model is named in params (`check_local_weights`,
called by params validation) and the model loaders ask their libraries for
safetensors only (`use_safetensors=True`; open_clip loads with `weights_only=True`).

A file you trust is converted once, outside the pipeline, by
`recap convert-checkpoint PATH --trust-pickle` (`convert`). Even then it is read with
`torch.load(weights_only=True)`, which restores tensors and plain containers and
refuses any other object, so a file that carries code fails to convert.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from recaption import io
from recaption.errors import UserError

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFETENSORS_SUFFIX = ".safetensors"
TRUST_FLAG = "--trust-pickle"

# Weight file names the libraries look for: pickled name -> safetensors name.
_RENAMES = {
    "pytorch_model": "model",  # transformers
    "open_clip_pytorch_model": "open_clip_model",  # open_clip hub layout
}


class PickledCheckpointError(UserError):
    """A pickled checkpoint where only safetensors are loaded."""


def is_pickled(path: Path) -> bool:
    return path.suffix.lower() in PICKLE_SUFFIXES


def pickled_weights(folder: Path) -> list[Path]:
    """Pickled weight files in a model folder (any depth) with no safetensors beside them."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and is_pickled(p)):
        if not list(path.parent.glob(f"*{SAFETENSORS_SUFFIX}")):
            found.append(path)
    return found


def refusal(path: Path) -> str:
    return (
        f"refusing to load pickled weights {path}: only safetensors are loaded, "
        "because a pickled checkpoint runs any code it carries when it is loaded. If you "
        f"trust the file, convert it once with `recap convert-checkpoint {path} {TRUST_FLAG}` "
        "and name the result instead."
    )


def check_local_weights(value: str) -> None:
    """Refuse `value` (a params value naming a model) when it is a local pickled
    checkpoint or a local model folder holding only pickled weights.

    Raises:
        PickledCheckpointError: naming why and the command that converts a trusted file.
    """
    path = Path(value)
    if path.is_file() and is_pickled(path):
        raise PickledCheckpointError(refusal(path))
    if path.is_dir() and (pickled := pickled_weights(path)):
        raise PickledCheckpointError(refusal(pickled[0]))


def safetensors_name(path: Path) -> Path:
    """Where the safetensors version of pickled weight file `path` goes, named as its
    library expects (`pytorch_model-00001-of-00002.bin` -> `model-00001-of-00002.safetensors`)."""
    stem = path.stem
    for old, new in _RENAMES.items():
        if stem == old or stem.startswith(f"{old}-"):
            stem = new + stem[len(old) :]
    return path.with_name(stem + SAFETENSORS_SUFFIX)


def convert(path: str | Path, trust_pickle: bool = False) -> list[Path]:
    """Convert a trusted pickled checkpoint (a file, or every pickled weight file of a
    model folder) to safetensors beside it; returns the files written.

    Raises:
        PickledCheckpointError: without `trust_pickle`, or when the file holds anything
            but tensors (weights_only refuses it: nothing in it runs).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    files = [path] if path.is_file() else pickled_weights(path)
    if not files or not all(is_pickled(f) for f in files):
        raise UserError(f"{path}: no pickled weights to convert ({', '.join(PICKLE_SUFFIXES)})")
    if not trust_pickle:
        raise PickledCheckpointError(
            f"{path}: converting unpickles the file; pass {TRUST_FLAG} only for a file you "
            "trust (it is still read with weights_only=True, which refuses anything but tensors)"
        )
    written = [_convert_file(f) for f in files]
    for index in path.rglob("*.bin.index.json") if path.is_dir() else []:
        written.append(_convert_index(index))
    return written


def _convert_file(path: Path) -> Path:
    import pickle

    import torch
    from safetensors.torch import save_file

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PickledCheckpointError(
            f"{path} holds more than tensors, so it was not loaded (weights_only): {exc}"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint: keep the weights only
    tensors = (
        {k: v for k, v in state.items() if torch.is_tensor(v)} if isinstance(state, dict) else {}
    )
    if not tensors:
        raise PickledCheckpointError(f"{path}: no tensors found (expected a state dict)")
    out = safetensors_name(path)
    with io.atomic_path(out) as tmp:
        # clone: tied weights share storage, which safetensors refuses to write twice
        save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, tmp)
    log.info("%s -> %s (%d tensors)", path, out, len(tensors))
    return out


def _convert_index(index: Path) -> Path:
    """A sharded checkpoint's index, pointing at the converted shards."""
    meta = json.loads(index.read_text())
    meta["weight_map"] = {
        k: safetensors_name(index.parent / v).name for k, v in meta["weight_map"].items()
    }
    weights = safetensors_name(index.with_name(index.name.removesuffix(".index.json")))
    out = weights.with_name(weights.name + ".index.json")
    io.write_text(out, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out

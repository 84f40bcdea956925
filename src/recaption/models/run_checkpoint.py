"""A training run's checkpoint (`training.fit` writes and reads it): weights, EMA, best
weights and optimizer moments as safetensors, the step, loss history and a fingerprint of
the run's config as JSON. A checkpoint written with other settings is never resumed."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from recaption import io

log = logging.getLogger(__name__)


def _fingerprint(config: Any) -> str:
    fields = {k: v for k, v in asdict(config).items() if k not in ("checkpoint_every", "log_every")}
    return io.sha256_bytes(json.dumps(fields, sort_keys=True).encode())


def save_checkpoint(folder, config, step, named, ema, optimizer, history=None, best=None) -> None:
    """Weights, EMA (if any), the best weights (if kept), optimizer moments, the step and
    the loss `history` (the running window and what was logged, so a resumed run reports
    what an uninterrupted one would), written atomically."""
    state = optimizer.state_dict()
    moments = {
        f"{i}.{k}": v.contiguous()
        for i, s in state["state"].items()
        for k, v in s.items()
        if torch.is_tensor(v)
    }
    with io.atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(
            {n: p.detach().contiguous() for n, p in named.items()}, tmp / "weights.safetensors"
        )
        if ema is not None:
            save_file({n: t.contiguous() for n, t in ema.shadow.items()}, tmp / "ema.safetensors")
        if best:
            save_file({n: t.contiguous() for n, t in best.items()}, tmp / "best.safetensors")
        save_file(moments, tmp / "optimizer.safetensors")
        io.write_json(tmp / "state.json", {"step": step, "fingerprint": _fingerprint(config),
                                           "param_groups": state["param_groups"],
                                           **(history or {})})  # fmt: skip


def read_state(folder: Path, config: Any) -> dict:
    """The state.json of a checkpoint written for `config`; {} if there is none."""
    if not (folder / "state.json").is_file():
        return {}
    meta = json.loads((folder / "state.json").read_text())
    if meta["fingerprint"] != _fingerprint(config):
        log.info("checkpoint in %s is from other params; starting afresh", folder)
        return {}
    return meta


def resume(folder, config, named, ema, optimizer, best=None) -> tuple[int, Any, list]:
    """Load a checkpoint written for this config into `named`, `ema`, `optimizer` and the
    `best` weights kept.

    Returns:
        (step to continue from, loss window, logged (step, metrics)); (0, [], []) if none.
    """
    folder = Path(folder)
    meta = read_state(folder, config)
    if not meta:
        return 0, [], []
    _copy_into(named, folder / "weights.safetensors")
    if ema is not None:
        _copy_into(ema.shadow, folder / "ema.safetensors")
    if best:
        _copy_into(best, folder / "best.safetensors")
    moments = load_file(folder / "optimizer.safetensors")
    state: dict = {}
    for key, tensor in moments.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    log.info("resuming training in %s at step %d", folder, meta["step"])
    logged = [(step, metrics) for step, metrics in meta.get("logged", [])]
    return meta["step"], meta.get("window", []), logged


@torch.no_grad()
def _copy_into(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Copy a safetensors file's tensors into `tensors` (which stay on their device)."""
    for name, value in load_file(path).items():
        tensors[name].copy_(value)

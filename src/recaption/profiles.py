"""Params profiles: partial params files merged over params.yaml.

DVC reads one params.yaml, so a profile (`configs/profiles/*.yaml`: the keys to change
and nothing else) is applied by writing the merged result there; `git checkout
params.yaml` gives the default back. The merged params are validated before anything
is written, so a profile with a typo never leaves a broken params.yaml.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from recaption.params import ParamsError, parse_params


def merge(base: dict, override: dict) -> dict:
    """Deep-merge `override` into a copy of `base`: mappings key by key, anything else
    (lists included) replaced whole."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> dict:
    """A YAML mapping; an empty file is an empty one."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: not found") from exc
    if not isinstance(raw, dict | None):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw or {}


def apply(params: Path, *profiles: Path) -> dict:
    """Merge `profiles`, in order, over `params` and write the result back to `params`
    (comments are not kept). Returns the merged mapping."""
    merged = read_yaml(params)
    for profile in profiles:
        merged = merge(merged, read_yaml(profile))
    parse_params(merged, source=" + ".join(str(p) for p in (params, *profiles)))
    params.write_text(yaml.safe_dump(merged, sort_keys=False), encoding="utf-8")
    return merged

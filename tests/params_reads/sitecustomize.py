"""Logs the params keys a DVC stage reads, for tests/test_pipeline.py.

Python imports `sitecustomize` at start-up from the first folder on its path that has
one; the test puts this folder first on PYTHONPATH for one `dvc repro`, with
RECAPTION_PARAMS_READS naming a file. In every stage process DVC starts (it sets
DVC_STAGE), each key of the loaded params that the stage reads, by attribute or through
`model_dump`, is appended to that file once, as `<stage>\t<dotted key>`. The hook lives
here rather than in src so the stages' code, and so their DVC deps, stay as they are.
"""

from __future__ import annotations

import os
from typing import Any

READS_ENV = "RECAPTION_PARAMS_READS"

# id(section) -> (the section, kept alive so its id is not reused; its dotted prefixes).
# A default instance may sit at two places of one tree: a read there counts for both.
_traced: dict[int, tuple[Any, set[str]]] = {}
_logged: set[str] = set()


def _note(section: Any, names: list[str]) -> None:
    """Log `names`, fields of `section`, under each place `section` has in the params."""
    entry = _traced.get(id(section))
    if entry is None or entry[0] is not section:
        return  # not part of the loaded params (a stage's own copy, a class default)
    keys = [prefix + name for prefix in sorted(entry[1]) for name in names]
    new = [key for key in dict.fromkeys(keys) if key not in _logged]
    if new:
        _logged.update(new)
        with open(os.environ[READS_ENV], "a", encoding="utf-8") as fh:
            fh.writelines(f"{os.environ['DVC_STAGE']}\t{key}\n" for key in new)


def _dumped(name: str, include: Any, exclude: Any) -> bool:
    """Whether `model_dump(include=, exclude=)` keeps field `name`, wholly or in part."""
    if include is not None and name not in include:
        return False
    if exclude is None or name not in exclude:
        return True
    return isinstance(exclude, dict) and exclude[name] is not True  # a nested exclusion


def _install() -> None:
    from pydantic import BaseModel

    from recaption import params as params_mod

    section_type = params_mod.Section

    def fields(section: Any, prefix: str = "") -> list[str]:
        """The dotted keys of every value under `section`."""
        out = []
        for name in type(section).model_fields:
            value = object.__getattribute__(section, name)
            if isinstance(value, section_type):
                out += fields(value, f"{prefix}{name}.")
            else:
                out.append(prefix + name)
        return out

    def getattribute(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        # A sub-section is only a way in: what is read of it is logged when it is.
        if name in type(self).model_fields and not isinstance(value, section_type):
            _note(self, [name])
        return value

    def model_dump(self, *, include=None, exclude=None, **kwargs) -> dict:
        keys = []
        for name in type(self).model_fields:
            if _dumped(name, include, exclude):
                value = object.__getattribute__(self, name)
                is_section = isinstance(value, section_type)
                keys += fields(value, f"{name}.") if is_section else [name]
        _note(self, keys)
        return BaseModel.model_dump(self, include=include, exclude=exclude, **kwargs)

    def load_params(*args, **kwargs):
        params = original(*args, **kwargs)
        stack = [(params, "")]
        while stack:
            section, prefix = stack.pop()
            _traced.setdefault(id(section), (section, set()))[1].add(prefix)
            for name in type(section).model_fields:
                value = object.__getattribute__(section, name)
                if isinstance(value, section_type):
                    stack.append((value, f"{prefix}{name}."))
        return params

    original = params_mod.load_params
    params_mod.load_params = load_params
    section_type.__getattribute__ = getattribute
    section_type.model_dump = model_dump


if os.environ.get(READS_ENV) and os.environ.get("DVC_STAGE"):
    _install()

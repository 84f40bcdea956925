"""A user's evaluation prompt suite: a CSV, TSV or JSONL file of prompts, each with an
optional category, as PartiPrompts (a TSV with `Prompt` and `Category`) and DrawBench
(a CSV with `Prompts` and `Category`) ship them.

Column names are matched without regard to case, and `prompts` is taken for `prompt`,
so either file is read as it comes. Rows whose prompt is blank are errors, not skipped:
a suite that silently shrinks changes every score read against it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from recaption.errors import UserError

UNCATEGORISED = "all"  # the category of every prompt when the file has no category column
_ALIASES = {"prompt": ("prompt", "prompts"), "category": ("category",)}


class PromptFileError(UserError, ValueError):
    """A prompt file that cannot be read as a prompt suite."""


@dataclass(frozen=True)
class UserPrompt:
    prompt: str
    category: str


def _rows(path: Path, field: str) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        if path.suffix.lower() in (".jsonl", ".json"):
            try:
                rows = [json.loads(line) for line in fh if line.strip()]
            except json.JSONDecodeError as exc:
                raise PromptFileError(f"{field}: {path.name} is not JSON Lines ({exc})") from None
            if not all(isinstance(r, dict) for r in rows):
                raise PromptFileError(f"{field}: {path.name}: each line must be a JSON object")
            return rows
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        return list(csv.DictReader(fh, delimiter=delimiter))


def _column(rows: list[dict], name: str) -> str | None:
    """The file's own spelling of column `name`, or None. JSON lines may differ in their
    keys, so every row's count."""
    found = {str(c).strip().lower(): c for r in rows for c in r}
    return next((found[a] for a in _ALIASES[name] if a in found), None)


def read_prompts(path: str | Path, field: str = "evaluate.prompts_file") -> list[UserPrompt]:
    """The prompts of `path` in file order; `field` names the setting in errors."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{field}: {str(path)!r} not found")
    if path.suffix.lower() not in (".csv", ".tsv", ".jsonl", ".json"):
        raise PromptFileError(f"{field}: {path.name} is not .csv, .tsv or .jsonl")
    rows = _rows(path, field)
    if not rows:
        raise PromptFileError(f"{field}: {path} holds no prompts")
    prompt, category = _column(rows, "prompt"), _column(rows, "category")
    if prompt is None:
        found = sorted({str(c) for r in rows for c in r})
        raise PromptFileError(f"{field}: {path.name} has no 'prompt' column; found {found}")
    blank = [n for n, r in enumerate(rows, 1) if not str(r.get(prompt) or "").strip()]
    if blank:
        raise PromptFileError(
            f"{field}: {path.name}: {len(blank)} blank prompt(s), rows {blank[:5]}"
        )
    return [UserPrompt(str(r[prompt]).strip(), _category(r, category)) for r in rows]


def _category(row: dict, column: str | None) -> str:
    value = str(row.get(column) or "").strip() if column else ""
    return value or UNCATEGORISED

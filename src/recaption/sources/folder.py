"""An image folder with a captions file (CSV, TSV or JSONL): file, caption, optional references."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from recaption.sources.base import RawRecord, SourceError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def read_folder(root: Path, captions_file: str, columns) -> Iterator[RawRecord]:
    """Records for every captions row and every unlisted image file, ordered by key.

    Keys are the file's path relative to `root`, without its suffix, unless the
    captions file has a `columns.key` column.
    """
    rows = _read_captions(root / captions_file, columns)
    listed = {_relative(row[columns.file]) for row in rows}
    unlisted = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.relative_to(root).as_posix() not in listed
    )
    records = [_record(root, row, columns) for row in rows]
    records += [
        RawRecord(
            key=_key(rel),
            source=rel,
            data=None,
            caption=None,
            reject=("missing_caption", f"image not listed in {captions_file}"),
        )
        for rel in unlisted
    ]
    records.sort(key=lambda r: r.key)
    for record in records:
        yield _load(root, record)


def _read_captions(path: Path, columns) -> list[dict]:
    if not path.is_file():
        raise SourceError(f"captions file {str(path)!r} not found (data.captions_file)")
    # surrogateescape keeps undecodable bytes so ingest can reject those rows, not the file.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        if path.suffix.lower() in (".jsonl", ".json"):
            rows = [_json_line(line, path, n) for n, line in enumerate(fh, 1) if line.strip()]
        else:
            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            rows = list(csv.DictReader(fh, delimiter=delimiter))
    missing = {columns.file, columns.caption} - set(rows[0] if rows else ())
    if rows and missing:
        raise SourceError(
            f"{path.name}: missing column(s) {sorted(missing)}; found {sorted(rows[0])} "
            "(set data.columns.file / data.columns.caption)"
        )
    return rows


def _json_line(line: str, path: Path, number: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path.name} line {number}: not valid JSON ({exc.msg})") from exc
    if not isinstance(row, dict):
        raise SourceError(
            f"{path.name} line {number}: expected an object, got {type(row).__name__}"
        )
    return row


def _relative(name: str) -> str:
    return PurePosixPath(str(name).replace("\\", "/")).as_posix()


def _key(rel: str) -> str:
    return str(PurePosixPath(rel).with_suffix(""))


def _text(value) -> str | None:
    return None if value is None or value == "" else str(value)


def _record(root: Path, row: dict, columns) -> RawRecord:
    rel = _relative(row[columns.file])
    key = _text(row.get(columns.key)) if columns.key else None
    meta = {
        k: v
        for k, v in row.items()
        if k not in (columns.caption, columns.short, columns.descriptive) and v not in (None, "")
    }
    return RawRecord(
        key=key or _key(rel),
        source=rel,
        data=None,
        caption=row.get(columns.caption),
        short=_text(row.get(columns.short)),
        descriptive=_text(row.get(columns.descriptive)),
        meta=meta,
    )


def _load(root: Path, record: RawRecord) -> RawRecord:
    """Read the image bytes, refusing paths that leave the folder (.., absolute, symlinks)."""
    if record.reject:
        return record
    path = root / record.source
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except OSError:
        inside = False
    if PurePosixPath(record.source).is_absolute() or not inside:
        record.reject = ("outside_root", f"{record.source} resolves outside data.path")
    elif not path.is_file():
        record.reject = ("missing_file", f"{record.source} not found")
    else:
        record.data = path.read_bytes()
    return record

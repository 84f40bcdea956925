"""Readers of real text-to-image data: each yields `RawRecord`s in a deterministic order.

Readers only read: decoding, validation and deduplication happen in
`recaption.ingest`, the same for every source. A reader that already knows a
record is bad (a missing file, a caption row without an image) says so in
`RawRecord.reject` instead of dropping it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from recaption.sources.base import RawRecord, SourceError
from recaption.sources.folder import read_folder
from recaption.sources.parquet import read_parquet
from recaption.sources.webdataset import read_webdataset

__all__ = ["RawRecord", "SourceError", "read_source"]


def read_source(
    kind: str, path: str | Path, columns, captions_file: str = "captions.csv"
) -> Iterator[RawRecord]:
    """Records of a real source.

    Args:
        kind: "folder", "parquet" or "webdataset".
        path: the folder, parquet file/folder, or tar file/folder.
        columns: a `recaption.params.Columns` (or anything with the same attributes).
        captions_file: for "folder", the CSV or JSONL inside `path`.
    """
    path = Path(path)
    if not path.exists():
        raise SourceError(f"data.path {str(path)!r} does not exist")
    if kind == "folder":
        return read_folder(path, captions_file, columns)
    if kind == "parquet":
        return read_parquet(path, columns)
    if kind == "webdataset":
        return read_webdataset(path, columns)
    raise SourceError(f"unknown source kind {kind!r}; choose folder, parquet or webdataset")

"""Parquet files with image bytes and a caption column (column names configurable).

The image column may hold raw bytes or a struct with a `bytes` field (as Hugging
Face `datasets` stores images). Files are streamed one record batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recaption.sources.base import RawRecord, SourceError


def read_parquet(path: Path, columns) -> Iterator[RawRecord]:
    """Records of one parquet file or of every *.parquet under a folder, in file then row order.

    Keys come from `columns.key` when set, else `<file stem>/<row number>`.
    """
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise SourceError(f"no .parquet files under {str(path)!r}")
    for file in files:
        schema = pq.read_schema(file)
        wanted = _check_schema(file, schema, columns)
        extra = [f.name for f in schema if _is_scalar(f.type) and f.name not in wanted]
        row = 0
        for batch in pq.ParquetFile(file).iter_batches(batch_size=256, columns=wanted + extra):
            for item in batch.to_pylist():
                yield _record(file, path, row, item, columns, extra)
                row += 1


def _check_schema(file: Path, schema: pa.Schema, columns) -> list[str]:
    names = set(schema.names)
    for required in (columns.image, columns.caption):
        if required not in names:
            raise SourceError(
                f"{file.name}: no column {required!r}; columns are {sorted(names)} "
                "(set data.columns.image / data.columns.caption)"
            )
    if columns.key and columns.key not in names:
        raise SourceError(
            f"{file.name}: no key column {columns.key!r}; columns are {sorted(names)}"
        )
    image_type = schema.field(columns.image).type
    if not (_is_binary(image_type) or _is_image_struct(image_type)):
        raise SourceError(
            f"{file.name}: column {columns.image!r} has type {image_type}; "
            "expected binary image bytes or a struct with a 'bytes' field"
        )
    for name in (columns.caption, columns.short, columns.descriptive, columns.key):
        if name in names and not (_is_text(schema.field(name).type)):
            raise SourceError(
                f"{file.name}: column {name!r} has type {schema.field(name).type}; expected string"
            )
    optional = [c for c in (columns.short, columns.descriptive) if c in names]
    keys = [columns.key] if columns.key else []
    return [columns.image, columns.caption, *optional, *keys]


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or _is_binary(t)


def _is_image_struct(t: pa.DataType) -> bool:
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0


def _is_scalar(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_integer(t) or pa.types.is_floating(t)


def _record(file: Path, root: Path, row: int, item: dict, columns, extra: list[str]) -> RawRecord:
    image = item[columns.image]
    if isinstance(image, dict):
        image = image.get("bytes")
    name = file.relative_to(root).with_suffix("").as_posix() if root.is_dir() else file.stem
    key = item.get(columns.key) if columns.key else None
    if isinstance(key, bytes):
        key = key.decode("utf-8", errors="replace")
    return RawRecord(
        key=str(key) if key not in (None, "") else f"{name}/{row:08d}",
        source=f"{file.name}#{row}",
        data=image,
        caption=item[columns.caption],
        short=item.get(columns.short) or None,
        descriptive=item.get(columns.descriptive) or None,
        meta={k: item[k] for k in extra if item[k] is not None},
    )

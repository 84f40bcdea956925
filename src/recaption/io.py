"""Atomic writes, parquet shards and content hashes.

Every output is written beside its final path and renamed into place, so a
killed stage never leaves a file that looks complete. Outputs carry no
timestamps, so the same inputs give the same bytes and DVC reruns nothing below.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SHARD_GLOB = "part-*.parquet"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds.

    Works for files and directories alike: whatever the block creates at the
    temporary path replaces `path` whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON with sorted keys and a trailing newline, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_table(path: str | Path, table: pa.Table, row_group_size: int = 4096) -> None:
    """Write one parquet file atomically (zstd, no pandas metadata)."""
    with atomic_path(path) as tmp:
        _write_parquet(tmp, table, row_group_size)


def _write_parquet(path: Path, table: pa.Table, row_group_size: int) -> None:
    table = table.replace_schema_metadata(None)
    pq.write_table(table, path, compression="zstd", row_group_size=row_group_size)


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def write_shard(directory: Path, index: int, table: pa.Table) -> Path:
    """Write shard `index` of a sharded dataset into `directory` (already a temp dir)."""
    path = directory / shard_name(index)
    _write_parquet(path, table, row_group_size=1024)
    return path


def shard_paths(directory: str | Path) -> list[Path]:
    """The shards of a sharded dataset, in order; an error if there are none."""
    shards = sorted(Path(directory).glob(SHARD_GLOB))
    if not shards:
        raise FileNotFoundError(f"{directory}: no {SHARD_GLOB} shards (run the ingest stage)")
    return shards


def read_columns(directory: str | Path, columns: list[str]) -> pa.Table:
    """Read some columns of every shard (cheap: parquet is columnar, images stay on disk)."""
    return pa.concat_tables(pq.read_table(p, columns=columns) for p in shard_paths(directory))


def iter_shards(directory: str | Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Stream a sharded dataset one shard at a time."""
    for path in shard_paths(directory):
        yield pq.read_table(path, columns=columns)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()

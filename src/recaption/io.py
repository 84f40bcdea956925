"""Atomic writes, parquet shards and content hashes (of bytes, files and folders).

Every output is written beside its final path and renamed into place, so a
killed stage never leaves a file that looks complete; the next write into the same
folder removes what a killed writer left there. Outputs carry no timestamps, so
the same inputs give the same bytes and DVC reruns nothing below.

Fault injection (for the tests): every rename passes two named failpoints,
`before-rename:<path>` and `after-rename:<path>`. With RECAPTION_KILL_AT set to one
of those names the process sends itself SIGKILL there; with RECAPTION_FAILPOINTS
set to a file, each failpoint passed is appended to it (`<command>\t<name>`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SHARD_GLOB = "part-*.parquet"


KILL_AT_ENV = "RECAPTION_KILL_AT"
TRACE_ENV = "RECAPTION_FAILPOINTS"


def failpoint(name: str) -> None:
    """Record passing failpoint `name`, or die here by SIGKILL if asked to (see above)."""
    if trace := os.environ.get(TRACE_ENV):
        with open(trace, "a", encoding="utf-8") as fh:
            fh.write(f"{' '.join(sys.argv[1:])}\t{name}\n")
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


TEMP_PREFIX = ".tmp-"


def _temp_path(path: Path) -> Path:
    """A fresh name beside `path`, `.tmp-<pid>-<random>-<name>`: the suffix is kept (some
    writers pick the format from it) and the pid says whether its writer still runs."""
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")


def remove_abandoned(folder: str | Path) -> None:
    """Remove the temporary files and folders that killed writers left in `folder`."""
    for tmp in Path(folder).glob(f"{TEMP_PREFIX}*"):
        pid = tmp.name[len(TEMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds.

    Works for files and directories alike: whatever the block creates at the
    temporary path replaces `path` whole. What killed writers left in the same
    folder is removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(path.parent)
    tmp = _temp_path(path)
    # A write inside another write's temporary folder is not a rename of an output.
    visible = not any(part.startswith(TEMP_PREFIX) for part in path.parent.parts)
    try:
        yield tmp
        if visible:
            failpoint(f"before-rename:{path.as_posix()}")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
        if visible:
            failpoint(f"after-rename:{path.as_posix()}")
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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


# A model folder's lineage record and the card written from it (see recaption.lineage).
LINEAGE_NAME = "lineage.json"
CARD_NAME = "README.md"


def tree_hash(path: str | Path) -> str:
    """sha256 of a file, or of a folder's relative paths and file hashes (sorted).

    Hidden files and folders are ignored, so an atomic writer's leftovers never count;
    so is a model folder's card (README.md beside lineage.json): it is written from the
    lineage record, so it says nothing the hash does not already cover.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    card = path / CARD_NAME if (path / LINEAGE_NAME).is_file() else None
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or file == card:
            continue
        digest.update(f"{rel.as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()

"""Webdataset tar shards as img2dataset writes them: `{key}.jpg|png|webp`, `.txt`, `.json`.

Members are streamed, never extracted to disk, so a member named `/etc/x` or
`../x` cannot write anywhere; such members, links and devices are rejected with
a reason instead.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from recaption.sources.base import RawRecord, SourceError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def read_webdataset(path: Path, columns) -> Iterator[RawRecord]:
    """Records of one .tar or of every .tar under a folder, in shard then member order."""
    shards = sorted(path.rglob("*.tar")) if path.is_dir() else [path]
    if not shards:
        raise SourceError(f"no .tar shards under {str(path)!r}")
    for shard in shards:
        try:
            yield from _read_shard(shard, columns)
        except tarfile.TarError as exc:
            raise SourceError(f"{shard.name}: not a readable tar file ({exc})") from exc


def _read_shard(shard: Path, columns) -> Iterator[RawRecord]:
    current: str | None = None
    parts: dict[str, bytes] = {}
    with tarfile.open(shard, mode="r|*") as tar:
        for member in tar:
            if member.isdir():
                continue
            where = f"{shard.name}:{member.name}"
            unsafe = _unsafe(member)
            if unsafe:
                yield RawRecord(
                    key=member.name,
                    source=where,
                    data=None,
                    caption=None,
                    reject=("unsafe_member", unsafe),
                )
                continue
            key, _, ext = PurePosixPath(member.name).name.partition(".")
            key = str(PurePosixPath(member.name).parent / key).removeprefix("./")
            if key != current:
                if current is not None:
                    yield _record(shard, current, parts, columns)
                current, parts = key, {}
            parts[ext.lower()] = tar.extractfile(member).read()
    if current is not None:
        yield _record(shard, current, parts, columns)


def _unsafe(member: tarfile.TarInfo) -> str | None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        return f"member path {member.name!r} is absolute or climbs out with '..'"
    if not member.isfile():
        return f"member {member.name!r} is a link or special file"
    return None


def _record(shard: Path, key: str, parts: dict[str, bytes], columns) -> RawRecord:
    ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
    meta = _json(parts.get("json"))
    caption: str | bytes | None = parts.get("txt")
    if caption is None:
        caption = meta.get(columns.caption)
    record = RawRecord(
        key=key,
        source=f"{shard.name}:{key}.{ext or '?'}",
        data=parts.get(ext) if ext else None,
        caption=caption,
        short=_str(meta.get(columns.short)),
        descriptive=_str(meta.get(columns.descriptive)),
        meta={
            k: v
            for k, v in meta.items()
            if k not in (columns.caption, columns.short, columns.descriptive)
            and isinstance(v, (str, int, float, bool))
        },
    )
    if ext is None:
        record.reject = ("missing_file", f"no image member among {sorted(parts)}")
    return record


def _json(data: bytes | None) -> dict:
    if not data:
        return {}
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _str(value) -> str | None:
    return value if isinstance(value, str) and value else None

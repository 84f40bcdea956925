"""Build the canonical dataset: validate, normalise, deduplicate and shard.

Records from any source (or indices of the synthetic world) go through worker
processes that decode and normalise them into rows; the main process drops
nothing silently (every bad record becomes a reject with a reason), removes
duplicate keys and duplicate pixels, and writes key-ordered parquet shards with
bounded memory (sorted runs, merged only when the source was not in key order).
"""

from __future__ import annotations

import heapq
import itertools
import json
import multiprocessing
import os
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from recaption import images, io
from recaption.sources import RawRecord

DATASET_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("image", pa.binary()),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("caption", pa.string()),
        ("short", pa.string()),
        ("descriptive", pa.string()),
        ("source", pa.string()),
        ("meta", pa.string()),
    ]
)
REJECT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)
# Every reason a record can be rejected for; reports count each of them, zero or not.
REJECT_REASONS = (
    "empty_file",
    "not_image",
    "truncated",
    "corrupt",
    "too_large",
    "missing_file",
    "outside_root",
    "unsafe_member",
    "missing_caption",
    "caption_not_utf8",
    "caption_too_long",
    "caption_unsafe_chars",
    "duplicate_key",
    "duplicate_image",
)


@dataclass
class IngestResult:
    """What an ingest run accepted and rejected (rejects in arrival order)."""

    accepted: int = 0
    rejects: list[dict] = field(default_factory=list)
    shards: int = 0
    stored_original: int = 0  # accepted images whose source bytes were kept (data.store)

    @property
    def seen(self) -> int:
        return self.accepted + len(self.rejects)

    @property
    def reject_fraction(self) -> float:
        return len(self.rejects) / self.seen if self.seen else 0.0

    def report(self) -> dict:
        by_reason = Counter(r["reason"] for r in self.rejects)
        return {
            "images_seen": self.seen,
            "images_accepted": self.accepted,
            "images_rejected": len(self.rejects),
            "images_stored_original": self.stored_original,
            "reject_fraction": round(self.reject_fraction, 6),
            "rejects_by_reason": {reason: by_reason.get(reason, 0) for reason in REJECT_REASONS},
            "shards": self.shards,
        }


def normalise(
    record: RawRecord,
    image_size: int | None,
    max_pixels: int,
    max_caption_chars: int,
    keep_original: bool = False,
) -> dict:
    """Turn a raw record into a dataset row, or a reject row with its reason.

    Args:
        image_size: centre-crop and resize to this square size; None keeps the size.
        max_caption_chars: longer captions are rejected (an optional caption is dropped).
        keep_original: store the JPEG/PNG/WebP bytes as they came when they read back as
            the normalised pixels (no resize, orientation or mode change); else a PNG.
    Returns:
        {"row": {...}, "kept": whether the bytes were kept} or {"reject": {...}}.
    """

    def reject(reason: str, detail: str) -> dict:
        return {
            "reject": {
                "key": record.key,
                "source": record.source,
                "reason": reason,
                "detail": detail[:500],
            }
        }

    if record.reject:
        return reject(*record.reject)
    try:
        caption = clean_text(record.caption)
    except UnicodeError as exc:
        return reject("caption_not_utf8", str(exc))
    if not caption:
        return reject("missing_caption", "caption missing or empty")
    if len(caption) > max_caption_chars:
        return reject("caption_too_long", f"{len(caption)} characters, limit {max_caption_chars}")
    if bad := unsafe_char(caption):
        return reject("caption_unsafe_chars", f"U+{ord(bad):04X} {unicodedata.name(bad, '')}")
    try:
        img = images.decode(record.data or b"", max_pixels)
    except images.ImageRejected as exc:
        return reject(exc.reason, exc.detail)
    if image_size:
        img = images.fit(img, image_size)
    kept = keep_original and images.reads_back_as(record.data, img)
    return {
        "row": make_row(
            record.key,
            img,
            caption,
            record.source,
            record.meta,
            short=_optional_text(record.short, max_caption_chars),
            descriptive=_optional_text(record.descriptive, max_caption_chars),
            encoded=record.data if kept else None,
        ),
        "kept": kept,
    }


def make_row(
    key: str,
    img,
    caption: str,
    source: str,
    meta: dict,
    short: str | None = None,
    descriptive: str | None = None,
    encoded: bytes | None = None,
) -> dict:
    """A dataset row from a normalised RGB image.

    Args:
        encoded: bytes that decode to exactly `img` (see `images.reads_back_as`), stored
            as they are; None stores a PNG. The pixel hash is the same either way.
    """
    return {
        "key": key,
        "image": encoded if encoded is not None else images.encode_png(img),
        "sha256": images.pixel_sha256(img),
        "width": img.width,
        "height": img.height,
        "caption": caption,
        "short": short,
        "descriptive": descriptive,
        "source": source,
        "meta": json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str),
    }


# Characters that make text display other than it reads ("Trojan Source"): the
# bidirectional embeddings, overrides and isolates.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def unsafe_char(text: str) -> str | None:
    """The first control character (other than whitespace) or bidirectional control in
    `text`, or None. Such a caption is rejected rather than silently edited."""
    for char in text:
        if char in BIDI_CONTROLS or (unicodedata.category(char) == "Cc" and not char.isspace()):
            return char
    return None


def clean_text(value) -> str | None:
    """Strict UTF-8 text with every run of whitespace (newlines, tabs) made one space;
    None stays None.

    Raises:
        UnicodeError: bytes that are not UTF-8, or text that kept undecodable bytes.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    value = str(value)
    value.encode("utf-8")  # lone surrogates (from surrogateescape) raise here
    return " ".join(value.split())


def _optional_text(value, max_chars: int) -> str | None:
    """An optional caption (short, descriptive): None when missing or unusable."""
    try:
        text = clean_text(value) or None
    except UnicodeError:
        return None
    if text is None or len(text) > max_chars or unsafe_char(text):
        return None
    return text


def run(
    items: Iterable,
    worker: Callable[[object], dict],
    out_dir: Path,
    shard_size: int,
    num_workers: int,
    total: int | None = None,
) -> IngestResult:
    """Map `worker` over `items` in worker processes and write the dataset to `out_dir`.

    `out_dir` must be a fresh directory (the caller renames it into place).
    """
    result = IngestResult()
    seen_keys: set[str] = set()
    seen_pixels: dict[str, str] = {}
    writer = SortedShardWriter(out_dir, shard_size)
    for out in tqdm(
        _map(worker, items, num_workers), total=total, desc="ingest", unit="img", mininterval=1.0
    ):
        if "reject" in out:
            result.rejects.append(out["reject"])
            continue
        row = out["row"]
        first = seen_pixels.get(row["sha256"])
        if row["key"] in seen_keys:
            result.rejects.append(
                _dup(row, "duplicate_key", "key already taken by an earlier record")
            )
        elif first is not None:
            result.rejects.append(_dup(row, "duplicate_image", f"same pixels as {first}"))
        else:
            seen_keys.add(row["key"])
            seen_pixels[row["sha256"]] = row["key"]
            writer.add(row)
            result.accepted += 1
            result.stored_original += bool(out.get("kept"))
    result.shards = writer.close()
    return result


def _dup(row: dict, reason: str, detail: str) -> dict:
    return {"key": row["key"], "source": row["source"], "reason": reason, "detail": detail}


def _map(worker: Callable, items: Iterable, num_workers: int, window: int = 512) -> Iterator[dict]:
    """Ordered map over items, in a process pool when num_workers > 0.

    Items are fed `window` at a time: Pool.imap alone would read the whole source
    (image bytes included) into its task queue as fast as it can.
    """
    if num_workers <= 0:
        yield from map(worker, items)
        return
    # fork is cheap and safe here: ingest imports no threaded library before the pool.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    items = iter(items)
    with multiprocessing.get_context(method).Pool(num_workers) as pool:
        while chunk := list(itertools.islice(items, window * num_workers)):
            yield from pool.imap(worker, chunk, chunksize=32)


class SortedShardWriter:
    """Writes rows as key-ordered shards of `shard_size` rows with bounded memory.

    Rows are buffered and written as sorted runs; if the runs turn out to be in
    global key order (the usual case: sources are read in key order) they become
    the shards as they are, otherwise they are merged.
    """

    def __init__(self, out_dir: Path, shard_size: int):
        self.out_dir = Path(out_dir)
        self.runs_dir = self.out_dir / ".runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.buffer: list[dict] = []
        self.runs: list[tuple[Path, str, str]] = []  # (path, first key, last key)

    def add(self, row: dict) -> None:
        self.buffer.append(row)
        if len(self.buffer) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        self.buffer.sort(key=lambda r: r["key"])
        table = pa.Table.from_pylist(self.buffer, schema=DATASET_SCHEMA)
        path = io.write_shard(self.runs_dir, len(self.runs), table)
        self.runs.append((path, self.buffer[0]["key"], self.buffer[-1]["key"]))
        self.buffer = []

    def close(self) -> int:
        """Finish writing; return the number of shards."""
        self._flush()
        ordered = all(a[2] < b[1] for a, b in zip(self.runs, self.runs[1:], strict=False))
        if ordered:
            for index, (path, _, _) in enumerate(self.runs):
                os.replace(path, self.out_dir / io.shard_name(index))
            count = len(self.runs)
        else:
            count = self._merge()
        for leftover in self.runs_dir.iterdir():
            leftover.unlink()
        self.runs_dir.rmdir()
        return count

    def _merge(self) -> int:
        streams = [_rows(path) for path, _, _ in self.runs]
        merged = heapq.merge(*streams, key=lambda r: r["key"])
        count, chunk = 0, []
        for row in merged:
            chunk.append(row)
            if len(chunk) == self.shard_size:
                io.write_shard(self.out_dir, count, pa.Table.from_pylist(chunk, DATASET_SCHEMA))
                count, chunk = count + 1, []
        if chunk:
            io.write_shard(self.out_dir, count, pa.Table.from_pylist(chunk, DATASET_SCHEMA))
            count += 1
        return count


def _rows(path: Path) -> Iterator[dict]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
        yield from batch.to_pylist()


def reject_table(rejects: list[dict]) -> pa.Table:
    """Rejects ordered by key, then source and reason, so reruns give the same bytes."""
    ordered = sorted(rejects, key=lambda r: (r["key"], r["source"], r["reason"]))
    return pa.Table.from_pylist(ordered, schema=REJECT_SCHEMA)


def worker_for_records(
    image_size: int | None, max_pixels: int, max_caption_chars: int, keep_original: bool = False
) -> Callable[[RawRecord], dict]:
    return partial(
        normalise,
        image_size=image_size,
        max_pixels=max_pixels,
        max_caption_chars=max_caption_chars,
        keep_original=keep_original,
    )


def synthetic_row(index: int, seed: int, config) -> dict:
    """Render example `index` of the synthetic world as a dataset row (a worker function)."""
    from recaption import world

    example = world.make_example(seed, index, config)
    scene = example.scene.to_dict()
    main = scene["objects"][scene["main"]]
    meta = {
        "scene": scene,
        "alt_kind": example.alt_kind,
        "main_shape": main["shape"],
        "main_colour": main["colour"],
        "num_objects": len(scene["objects"]),
    }
    row = make_row(
        synthetic_key(index),
        example.image,
        example.caption,
        "synthetic",
        meta,
        short=example.short,
        descriptive=example.descriptive,
    )
    return {"row": row}


def synthetic_key(index: int) -> str:
    return f"{index:08d}"

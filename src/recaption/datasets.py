"""Reading the pipeline's own datasets back: images as tensors, splits, caption sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from recaption import images as imaging
from recaption import io

# Holding images in memory is for small worlds; past this, stream or use a pretrained model.
MAX_IN_MEMORY_BYTES = 4 << 30


def read_splits(path: str | Path) -> dict[str, set[str]]:
    """Keys of each split ("first", "second", "heldout") from splits.parquet."""
    rows = pq.read_table(path).to_pylist()
    return {name: {r["key"] for r in rows if r[name]} for name in ("first", "second", "heldout")}


def read_captions(path: str | Path) -> dict[str, str]:
    """key -> caption of an annotations (or captions) parquet file: a key's first row
    where it has several (an annotation set's LM rewrites follow its caption)."""
    out: dict[str, str] = {}
    for key, caption in read_caption_rows(path):
        out.setdefault(key, caption)
    return out


def read_caption_rows(path: str | Path) -> list[tuple[str, str]]:
    """(key, caption) of every row of an annotations parquet file, in file order: with
    `annotate.augment`, a key's caption and then its rewrites."""
    table = pq.read_table(path, columns=["key", "caption"])
    keys, captions = table.column("key").to_pylist(), table.column("caption").to_pylist()
    return list(zip(keys, captions, strict=True))


def load_rows(dataset_dir: str | Path, columns: list[str], keys: set[str] | None = None) -> list:
    """Rows (dicts) of the dataset, in key order, optionally only those in `keys`."""
    rows = []
    for shard in io.iter_shards(dataset_dir, ["key", *columns]):
        if keys is not None:
            mask = np.isin(np.asarray(shard.column("key").to_pylist(), dtype=object), list(keys))
            shard = shard.filter(mask)
        rows += shard.to_pylist()
    return rows


def fits_in_memory(n: int, size: int, limit: int) -> bool:
    """Whether n uint8 images at `size` px take at most `limit` bytes."""
    return n * 3 * size * size <= limit


def images_tensor(pngs: list[bytes], size: int) -> torch.Tensor:
    """uint8 (N, 3, size, size) from encoded images, centre-cropped/resized when needed."""
    if not fits_in_memory(len(pngs), size, MAX_IN_MEMORY_BYTES):
        raise MemoryError(
            f"{len(pngs)} images at {size} px do not fit in memory for in-pipeline training; "
            "use a pretrained model or fewer images"
        )
    out = torch.empty((len(pngs), 3, size, size), dtype=torch.uint8)
    for i, data in enumerate(pngs):
        out[i] = torch.from_numpy(imaging.fitted_array(data, size)).permute(2, 0, 1)
    return out

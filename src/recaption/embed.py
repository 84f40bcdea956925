"""CLIP embeddings of every dataset image, content-addressed, computed once per image.

Images are decoded and preprocessed in DataLoader workers while the main process
runs the forward pass. Embeddings are keyed by the pixel hash and the CLIP's
fingerprint: a rerun reuses every vector whose (pixels, CLIP) pair it has seen
and computes only the rest. With a vision-language captioner the same cache holds
its frozen vision tower's features instead (any `ImageEncoder`), keyed the same way.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from recaption import engine, io
from recaption import images as imaging
from recaption.models import clip as clip_lib
from recaption.models.clip import Clip
from recaption.params import Params

log = logging.getLogger(__name__)
# Part of every cache key: bump it whenever decoding, preprocessing or `encode` changes,
# so vectors made the old way are never reused as if they were current.
PROCEDURE_VERSION = 2


def cache_fingerprint(clip_fingerprint: str, grid: int) -> str:
    """The key cached vectors are valid under: the CLIP, the grid and this procedure."""
    return io.sha256_bytes(f"{clip_fingerprint}:{grid}:{PROCEDURE_VERSION}".encode())


@dataclass
class Embeddings:
    """Rows of an embeddings file.

    `vectors` is float16 (N, D): CLIP's pooled image embedding, L2-normalised.
    `grid` is float16 (N, G*G*C) or None: the image's spatial feature map pooled to
    G x G cells, each cell L2-normalised. CLIP's pooled vector carries little of
    where things are; the cells keep the layout for the captioner.
    """

    keys: list[str]
    shas: list[str]
    clip: str
    vectors: np.ndarray
    grid: np.ndarray | None = None

    def features(self) -> np.ndarray:
        """(N, D [+ G*G*C]) float32: everything the embedding carries, side by side."""
        parts = [self.vectors] if self.grid is None else [self.vectors, self.grid]
        return np.concatenate(parts, axis=1).astype(np.float32)

    def features_of(self, keys: Sequence[str]) -> np.ndarray:
        """(len(keys), D [+ G*G*C]) float32: `features()` of the given keys, in their order."""
        index = {k: i for i, k in enumerate(self.keys)}
        _require(keys, index)
        return self.rows_features([index[k] for k in keys])

    def rows_features(self, rows: Sequence[int]) -> np.ndarray:
        """(len(rows), D [+ G*G*C]) float32: `features()` of the given row numbers."""
        parts = [self.vectors[rows]] + ([] if self.grid is None else [self.grid[rows]])
        return np.concatenate(parts, axis=1).astype(np.float32)


def _require(keys: Sequence[str], known: Mapping[str, object]) -> None:
    """A KeyError naming how many of `keys` have no cached embedding, and the first."""
    missing = [k for k in keys if k not in known]
    if missing:
        raise KeyError(f"{len(missing)} keys have no cached embedding (first: {missing[0]})")


def _fixed_list(array: np.ndarray) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(array, dtype=np.float16).ravel(), pa.float16())
    return pa.FixedSizeListArray.from_arrays(flat, array.shape[1])


def _matrix(column: pa.ChunkedArray, rows: int) -> np.ndarray:
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(rows, -1).astype(np.float16)


def to_table(emb: Embeddings) -> pa.Table:
    """key, sha256, clip (fingerprint), embedding [, grid] as fixed-size float16 lists."""
    columns = {
        "key": pa.array(emb.keys, pa.string()),
        "sha256": pa.array(emb.shas, pa.string()),
        "clip": pa.array([emb.clip] * len(emb.keys), pa.string()),
        "embedding": _fixed_list(emb.vectors),
    }
    if emb.grid is not None:
        columns["grid"] = _fixed_list(emb.grid)
    return pa.table(columns)


def read(path: str | Path) -> Embeddings:
    table = pq.read_table(path)
    clips = table.column("clip").unique().to_pylist()
    grid = table.column("grid") if "grid" in table.column_names else None
    return Embeddings(
        keys=table.column("key").to_pylist(),
        shas=table.column("sha256").to_pylist(),
        clip=clips[0] if clips else "",
        vectors=_matrix(table.column("embedding"), len(table)),
        grid=None if grid is None else _matrix(grid, len(table)),
    )


class ShardImages(Dataset):
    """uint8 (3, size, size) images at (shard, row) positions of a sharded dataset.

    Workers only decode (and fit to `size` when the image is not already that
    size); normalisation happens per batch in the main process. Each worker keeps
    the image column of its current shard only; batches are contiguous runs of
    positions, so a worker reads each shard about once.
    """

    def __init__(self, shards: Sequence[Path], positions: Sequence[tuple[int, int]], size: int):
        self.shards = list(shards)
        self.positions = list(positions)
        self.size = size
        self._shard: int | None = None
        self._images: list[bytes] = []

    def __len__(self) -> int:
        return len(self.positions)

    def _decode(self, index: int) -> np.ndarray:
        shard, row = self.positions[index]
        if shard != self._shard:
            table = pq.read_table(self.shards[shard], columns=["image"])
            self._images, self._shard = table.column("image").to_pylist(), shard
        return imaging.fitted_array(self._images[row], self.size)  # (H, W, 3)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self._decode(index)).permute(2, 0, 1)  # (3, H, W)

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        # DataLoader fetches a whole batch at once: one stacked array, no per-item collate.
        batch = np.stack([self._decode(i) for i in indices])  # (B, H, W, 3)
        return torch.from_numpy(batch).permute(0, 3, 1, 2)  # (B, 3, H, W)


def _batched(batch):
    """collate_fn for datasets whose __getitems__ already returns the batch."""
    return batch if isinstance(batch, torch.Tensor) else torch.stack(batch)


def _to_device(clip: Clip, device: torch.device) -> None:
    """On CUDA the image tower runs in half precision, channels-last."""
    if device.type == "cuda":
        clip.model.half().to(device, memory_format=torch.channels_last)


def _forward(clip: Clip, batch: torch.Tensor, device: torch.device, grid: int) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> (B, D [+ G*G*C]) float32 on the CPU."""
    x = clip.normalise(batch.to(device, non_blocking=True))
    if device.type == "cuda":
        x = x.half().contiguous(memory_format=torch.channels_last)
    return clip_lib.features(clip, x, grid).cpu()


class ImageEncoder(Protocol):
    """What the cache runs images through: CLIP (`ClipImages`) or a VLM's frozen vision
    tower (recaption.models.vision_tower). A row's first `pooled_dim` columns are the
    `embedding` column; the rest, if any, the `grid` column."""

    image_size: int
    pooled_dim: int

    def to_device(self, device: torch.device) -> None: ...

    def encode(self, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float32 (B, F) on the CPU."""
        ...


class ClipImages:
    """CLIP as the cache's encoder: the pooled embedding, and the grid cells when `grid`."""

    def __init__(self, clip: Clip, grid: int):
        self.clip, self.grid = clip, grid
        self.image_size, self.pooled_dim = clip.image_size, clip.model_cfg["embed_dim"]

    def to_device(self, device: torch.device) -> None:
        _to_device(self.clip, device)

    def encode(self, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        return _forward(self.clip, batch, device, self.grid)


def as_encoder(model: Clip | ImageEncoder, grid: int) -> ImageEncoder:
    """A CLIP wrapped as an encoder with its `grid`; any other encoder as it is."""
    return ClipImages(model, grid) if isinstance(model, Clip) else model


@torch.inference_mode()
def embed_images(
    clip: Clip | ImageEncoder,
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    device: str = "cpu",
    grid: int = 0,
) -> np.ndarray:
    """float16 (N, D [+ G*G*C]) embeddings of every item of `dataset`, in order (see `encode`);
    `grid` applies to a CLIP (an `ImageEncoder` has its own layout).

    On CUDA the model runs in half precision, channels-last; an out-of-memory
    error halves the batch and retries it (logged), and later batches keep the
    smaller size.
    """
    dev = torch.device(device)
    encoder = as_encoder(clip, grid)
    encoder.to_device(dev)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        shuffle=False,
        collate_fn=_batched,
        pin_memory=dev.type == "cuda",
    )
    out, chunk = [], batch_size
    with tqdm(total=len(dataset), desc="embed", unit="img", mininterval=1) as bar:
        for batch in loader:
            start = 0
            while start < len(batch):
                try:
                    out.append(encoder.encode(batch[start : start + chunk], dev))
                except torch.cuda.OutOfMemoryError:
                    if chunk == 1:
                        raise
                    chunk //= 2
                    torch.cuda.empty_cache()
                    log.warning("CUDA out of memory: batch size halved to %d", chunk)
                    continue
                start += chunk
            bar.update(len(batch))
    if not out:
        return np.zeros((0, 0), np.float16)
    return torch.cat(out).numpy().astype(np.float16)


@torch.inference_mode()
def embed_texts(
    clip: Clip, texts: Sequence[str], batch_size: int = 256, device: str = "cpu"
) -> np.ndarray:
    """float16 (N, D) L2-normalised text embeddings."""
    dev = torch.device(device)
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = clip.tokenizer(list(texts[start : start + batch_size])).to(dev)
        out.append(F.normalize(clip.model.encode_text(tokens).float(), dim=-1).cpu())
    return torch.cat(out).numpy().astype(np.float16)


@dataclass
class EmbedResult:
    images: int
    computed: int
    reused: int
    shards_written: int


def read_dir(folder: str | Path) -> Embeddings:
    """All embedding shards of a folder, concatenated in key order."""
    parts = [read(p) for p in io.shard_paths(folder)]
    grids = [p.grid for p in parts]
    return Embeddings(
        keys=[k for p in parts for k in p.keys],
        shas=[s for p in parts for s in p.shas],
        clip=parts[0].clip,
        vectors=np.concatenate([p.vectors for p in parts]),
        grid=None if any(g is None for g in grids) else np.concatenate(grids),
    )


def read_keys(folder: str | Path) -> tuple[list[str], list[str], str]:
    """(every key, in order; each key's pixel hash; the cache fingerprint) of an
    embeddings folder, without the vectors."""
    columns = ["key", "sha256", "clip"]
    tables = [pq.read_table(p, columns=columns) for p in io.shard_paths(folder)]
    keys = [k for t in tables for k in t.column("key").to_pylist()]
    shas = [s for t in tables for s in t.column("sha256").to_pylist()]
    clips = {c for t in tables for c in t.column("clip").unique().to_pylist()}
    if len(clips) > 1:
        raise ValueError(f"{folder}: shards made by {len(clips)} different CLIPs")
    return keys, shas, clips.pop() if clips else ""


class EmbeddingFolder:
    """An embeddings folder read on demand, for datasets too large to hold.

    Only the keys and fingerprints are read up front (`keys` and `clip`, as
    `read_keys`); `features_of` and `vectors_of` read the rows they are asked for from
    the shards that hold them, one shard in memory at a time, and give what
    `read_dir(folder)`'s methods would give.
    """

    def __init__(self, folder: str | Path):
        self.paths = io.shard_paths(folder)
        self.keys, _, self.clip = read_keys(folder)
        places = [(s, row) for s, path in enumerate(self.paths)
                  for row in range(pq.read_metadata(path).num_rows)]  # fmt: skip
        self.where = dict(zip(self.keys, places, strict=True))  # key -> (shard, row)
        self._held: tuple[int, Embeddings] | None = None

    def widths(self) -> tuple[int, int]:
        """(pooled dim D, grid width G*G*C, 0 without a grid) of the rows."""
        if not self.paths:
            return 0, 0
        schema = pq.read_schema(self.paths[0])
        grid = schema.field("grid").type.list_size if "grid" in schema.names else 0
        return schema.field("embedding").type.list_size, grid

    def _shard(self, s: int) -> Embeddings:
        if self._held is None or self._held[0] != s:
            self._held = (s, read(self.paths[s]))
        return self._held[1]

    def _rows(self, keys: Sequence[str], part) -> np.ndarray:
        _require(keys, self.where)
        by_shard: dict[int, tuple[list[int], list[int]]] = {}  # shard -> (positions, rows)
        for i, k in enumerate(keys):
            s, row = self.where[k]
            positions, rows = by_shard.setdefault(s, ([], []))
            positions.append(i)
            rows.append(row)
        out: np.ndarray | None = None
        for s, (positions, rows) in by_shard.items():  # each shard once, in first-use order
            values = part(self._shard(s), rows)
            if out is None:
                out = np.empty((len(keys), values.shape[1]), values.dtype)
            out[positions] = values
        return out if out is not None else np.zeros((0, 0), np.float32)

    def features_of(self, keys: Sequence[str]) -> np.ndarray:
        """(len(keys), D [+ G*G*C]) float32, as `Embeddings.features_of`."""
        return self._rows(keys, lambda emb, rows: emb.rows_features(rows))

    def vectors_of(self, keys: Sequence[str]) -> np.ndarray:
        """(len(keys), D) float16: the pooled vectors alone."""
        return self._rows(keys, lambda emb, rows: emb.vectors[rows])


class _OldVectors:
    """The previous run's shards that are still valid (same CLIP, procedure and grid):
    the rows each holds, and where each pixel hash's vector lives, read on demand."""

    def __init__(self, folder: Path, fingerprint: str, grid: int):
        self.rows: dict[Path, tuple[list[str], list[str]]] = {}  # shard -> (keys, shas)
        self.where: dict[str, tuple[Path, int]] = {}
        self._cache: dict[Path, np.ndarray] = {}
        for path in sorted(folder.glob(io.SHARD_GLOB)) if folder.is_dir() else []:
            meta = pq.read_table(path, columns=["key", "sha256", "clip"])
            has_grid = "grid" in pq.read_schema(path).names
            if has_grid != (grid > 0) or set(meta.column("clip").to_pylist()) != {fingerprint}:
                continue
            shas = meta.column("sha256").to_pylist()
            self.rows[path] = (meta.column("key").to_pylist(), shas)
            for row, sha in enumerate(shas):
                self.where[sha] = (path, row)

    def unchanged(self, path: Path, keys: list[str], shas: list[str]) -> bool:
        """Is the shard at `path` already exactly what these rows need?"""
        return self.rows.get(path) == (keys, shas)

    def get(self, sha: str) -> np.ndarray:
        path, row = self.where[sha]
        if path not in self._cache:
            self._cache = {path: read(path).features().astype(np.float16)}  # one shard at a time
        return self._cache[path][row]


@dataclass
class _ShardPlan:
    """One embedding shard to (re)write: its rows, and which of them need the model."""

    index: int
    keys: list[str]
    shas: list[str]
    todo: list[int]  # rows whose pixels have no valid cached vector


def clip_encoder(clip_dir: str, grid: int) -> ClipImages:
    """The CLIP saved in `clip_dir` as an encoder with its `grid` (what a replica loads)."""
    return ClipImages(clip_lib.load(clip_dir), grid)


class Worker:
    """The encoder, loaded once by `load_encoder`; decodes and embeds one batch of a
    dataset shard per call (the `engine: ray` path; locally a DataLoader overlaps
    decoding instead)."""

    def __init__(self, load_encoder: Callable[[], ImageEncoder], dataset_dir: str, device: str):
        self.encoder = load_encoder()
        self.shards = io.shard_paths(dataset_dir)
        self.device = torch.device(device)
        self.encoder.to_device(self.device)

    @torch.inference_mode()
    def __call__(self, unit: dict) -> pa.Table:
        rows = unit["rows"]
        positions = [(unit["shard"], r) for r in rows]
        images = ShardImages(self.shards, positions, self.encoder.image_size)
        batch = images.__getitems__(list(range(len(rows))))
        vectors = self.encoder.encode(batch, self.device).numpy().astype(np.float16)
        return pa.table({"row": pa.array(rows, pa.int64()), "vector": _fixed_list(vectors)})


def _batch_units(plans: Sequence[_ShardPlan], batch_size: int) -> list[dict]:
    """The engine's units: each shard's rows to embed, in the batches the local path uses."""
    return [
        {"shard": p.index, "rows": p.todo[start : start + batch_size]}
        for p in plans
        for start in range(0, len(p.todo), batch_size)
    ]


def embed_dataset(
    clip: Clip | ImageEncoder,
    fingerprint: str,
    dataset_dir: str | Path,
    out_dir: str | Path,
    batch_size: int,
    num_workers: int,
    device: str = "cpu",
    grid: int = 0,
    params: Params | None = None,
    clip_dir: str | Path | None = None,
    load_encoder: Callable[[], ImageEncoder] | None = None,
) -> EmbedResult:
    """Bring `out_dir` (one embedding shard per dataset shard) up to date with the dataset.

    A shard whose keys, pixel hashes and CLIP are unchanged is left alone; other
    shards are rebuilt from vectors already computed for the same pixels and CLIP,
    and only the remaining images go through the model (`clip`: a CLIP, or another
    `ImageEncoder`, then with `grid` 0). With `params.engine: ray` the batches run on a
    Ray cluster and each shard is written as soon as its last batch is back; replicas
    load the encoder with `load_encoder` (picklable), by default the CLIP in `clip_dir`.
    """
    out_dir = Path(out_dir)
    shards = io.shard_paths(dataset_dir)
    if out_dir.is_dir():  # persistent: a killed run's temporaries may be here
        io.remove_abandoned(out_dir)
    old = _OldVectors(out_dir, fingerprint, grid)
    result = EmbedResult(0, 0, 0, 0)
    encoder = as_encoder(clip, grid)
    dim = encoder.pooled_dim
    plans = []
    for index, shard in enumerate(shards):
        table = pq.read_table(shard, columns=["key", "sha256"])
        keys, shas = table.column("key").to_pylist(), table.column("sha256").to_pylist()
        result.images += len(keys)
        if old.unchanged(out_dir / io.shard_name(index), keys, shas):
            result.reused += len(keys)
            continue
        todo = [row for row, sha in enumerate(shas) if sha not in old.where]
        plans.append(_ShardPlan(index, keys, shas, todo))

    def write(plan: _ShardPlan, fresh: dict[int, np.ndarray]) -> None:
        rows = np.stack(
            [fresh[r] if r in fresh else old.get(sha) for r, sha in enumerate(plan.shas)]
        )
        emb = Embeddings(
            plan.keys, plan.shas, fingerprint, rows[:, :dim], rows[:, dim:] if grid else None
        )
        io.write_table(out_dir / io.shard_name(plan.index), to_table(emb))
        result.computed += len(plan.todo)
        result.reused += len(plan.keys) - len(plan.todo)
        result.shards_written += 1

    if params is None or params.engine == "local":
        for plan in plans:
            positions = [(plan.index, row) for row in plan.todo]
            dataset = ShardImages(shards, positions, encoder.image_size)
            vectors = (
                embed_images(encoder, dataset, batch_size, num_workers, device, grid)
                if plan.todo
                else []
            )
            write(plan, dict(zip(plan.todo, vectors, strict=True)))
    else:
        if load_encoder is None and clip_dir is not None:
            load_encoder = partial(clip_encoder, str(clip_dir), grid)
        if load_encoder is None:
            raise ValueError("engine: ray needs load_encoder or clip_dir: what replicas load")
        units = _batch_units(plans, batch_size)
        waiting = Counter(unit["shard"] for unit in units)  # batches still out, per shard
        fresh: dict[int, dict[int, np.ndarray]] = {p.index: {} for p in plans}
        written = 0

        def write_ready() -> None:
            # In shard order, as the local path writes: a shard rebuilt from vectors of
            # earlier shards must read them before those files are replaced.
            nonlocal written
            while written < len(plans) and not waiting[plans[written].index]:
                write(plans[written], fresh.pop(plans[written].index))
                written += 1

        write_ready()  # the leading shards whose every vector is cached
        kwargs = {"load_encoder": load_encoder, "dataset_dir": str(dataset_dir), "device": device}
        for position, table in engine.map_units(Worker, kwargs, units, params, "embed", "batch"):
            shard = units[position]["shard"]
            vectors = _matrix(table.column("vector"), table.num_rows)
            fresh[shard].update(zip(table.column("row").to_pylist(), vectors, strict=True))
            waiting[shard] -= 1
            write_ready()
    for stale in sorted(out_dir.glob(io.SHARD_GLOB))[len(shards) :]:
        stale.unlink()
    log.info(
        "embed: %d images, %d computed, %d reused, %d shards written",
        result.images,
        result.computed,
        result.reused,
        result.shards_written,
    )
    return result

"""Training data streamed from shards, never all held in memory: the dataset's images
(`ImageStream`), the latents encode_latents cached for them (`LatentStream`), or the
image features embed cached (`FeatureStream`).

In memory, a training step's batch is a slice of a seeded permutation of every image
(`training.epoch_batch`). A dataset too large for that is read as webdataset-style
loaders read tar shards: each epoch deals the shards, in a seeded order, to the
loader's worker processes; a worker reads its shards one after another through a
shuffle buffer of `buffer` rows and decodes a row only when it leaves the buffer; the
loader takes the workers' rows in turn. At most about `buffer` encoded rows per
worker are held, whatever the dataset's size.

The order is a pure function of (seed, epoch, shard sizes, buffer, workers): a
worker's sequence is drawn on row numbers before any image is read, so the main
process knows every epoch's order in advance, and a resumed run skips to any step
without decoding the rows before it. A different `workers` gives another order.
Cached latents are streamed the same way from their own shards (one per dataset
shard, the same rows): a stream is the shards' index, the columns it reads and how a
row's values become tensors. Images a stage makes in memory (a corpus of fresh world
renders) are written as shards of their own and joined to the dataset's index
(`write_images`, `join`), so one order mixes both.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from recaption import images as imaging
from recaption import io
from recaption.models.training import epoch_of, steps_per_epoch

READ_ROWS = 64  # rows a worker reads from a shard at a time


@dataclass(frozen=True)
class ShardIndex:
    """Where each training image lives: `rows[s]` holds (row in shard s, training index)
    for the rows of shard `paths[s]` that are training images."""

    paths: tuple[Path, ...]
    rows: tuple[tuple[tuple[int, int], ...], ...]

    @property
    def size(self) -> int:
        return sum(len(r) for r in self.rows)


def shard_index(dataset_dir: str | Path, keys: Sequence[str]) -> ShardIndex:
    """The shards holding `keys` (training index i is keys[i]; a key given twice, as an
    image with two captions is, is one row read for two training indices), read from
    their key columns only. An error names the first key no shard holds."""
    position: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        position.setdefault(k, []).append(i)
    paths, rows, held = [], [], set()
    for path in io.shard_paths(dataset_dir):
        shard_keys = pq.read_table(path, columns=["key"]).column("key").to_pylist()
        mine = tuple((r, i) for r, k in enumerate(shard_keys) for i in position.get(k, ()))
        if mine:
            paths.append(path)
            rows.append(mine)
            held.update(shard_keys)
    missing = next((k for k in keys if k not in held), None)
    if missing is not None:
        raise KeyError(f"{dataset_dir}: no shard holds training image {missing!r}")
    return ShardIndex(tuple(paths), tuple(rows))


def join(first: ShardIndex, second: ShardIndex) -> ShardIndex:
    """One index of both: `second`'s training indices follow `first`'s."""
    shift = first.size
    moved = tuple(tuple((r, i + shift) for r, i in rows) for rows in second.rows)
    return ShardIndex(first.paths + second.paths, first.rows + moved)


def write_images(folder: str | Path, images: torch.Tensor, shard_size: int = 4096) -> ShardIndex:
    """uint8 (N, 3, H, W) images written as PNG shards in `folder` and indexed as training
    indices 0..N-1: images made in memory (a corpus of fresh renders) streamed beside a
    dataset's, in one order (`join`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths, rows = [], []
    for s, start in enumerate(range(0, len(images), shard_size)):
        part = images[start : start + shard_size].permute(0, 2, 3, 1).numpy()
        pngs = [imaging.encode_png(Image.fromarray(np.ascontiguousarray(x))) for x in part]
        keys = [str(start + j) for j in range(len(pngs))]
        paths.append(io.write_shard(folder, s, pa.table({"key": keys, "image": pngs})))
        rows.append(tuple((j, start + j) for j in range(len(pngs))))
    return ShardIndex(tuple(paths), tuple(rows))


def worker_sequences(
    index: ShardIndex, seed: int, epoch: int, buffer: int, workers: int
) -> list[list[tuple[int, int, int]]]:
    """Each worker's (shard, row, training index) sequence for an epoch: the shards in a
    permutation seeded by (seed, epoch), dealt round-robin; each worker's rows through a
    shuffle buffer of `buffer` drawn from its own seeded generator."""
    order = random.Random(seed * 7919 + epoch).sample(range(len(index.paths)), len(index.paths))
    sequences = []
    for w in range(max(workers, 1)):
        rng = random.Random((seed * 7919 + epoch) * 1009 + w)
        pending: list[tuple[int, int, int]] = []
        out: list[tuple[int, int, int]] = []
        for s in order[w :: max(workers, 1)]:
            for row, i in index.rows[s]:
                pending.append((s, row, i))
                if len(pending) >= buffer:
                    out.append(_pop_random(pending, rng))
        while pending:
            out.append(_pop_random(pending, rng))
        sequences.append(out)
    return sequences


def _pop_random(pending: list, rng: random.Random):
    """Remove and return a random element in O(1) (swap with the last)."""
    j = rng.randrange(len(pending))
    pending[j], pending[-1] = pending[-1], pending[j]
    return pending.pop()


def round_robin(lengths: Sequence[int]) -> list[tuple[int, int]]:
    """(worker, its item number) in the order a DataLoader yields its workers' items:
    one from each in turn, skipping a worker once it is exhausted."""
    out, taken = [], [0] * len(lengths)
    while len(out) < sum(lengths):
        for w, n in enumerate(lengths):
            if taken[w] < n:
                out.append((w, taken[w]))
                taken[w] += 1
    return out


class _EpochRows(IterableDataset):
    """One epoch's (worker, item number, training index, tensors) from each worker's
    sequence, from item `skip[w]` on; rows are read as the sequence needs them and
    `decode`d as they leave."""

    def __init__(self, index: ShardIndex, sequences: list, skip: list[int],
                 columns: tuple[str, ...], decode) -> None:  # fmt: skip
        self.index, self.sequences, self.skip = index, sequences, skip
        self.columns, self.decode = columns, decode

    def __iter__(self) -> Iterator[tuple[int, int, int, tuple[torch.Tensor, ...]]]:
        info = get_worker_info()
        w = info.id if info is not None else 0
        wanted = self.sequences[w][self.skip[w] :]
        needed = Counter((s, row) for s, row, _ in wanted)
        order = [s for s, _, _ in self.sequences[w]]
        read = _ShardReader(self.index, order, needed, self.columns)
        for k, (s, row, i) in enumerate(wanted, start=self.skip[w]):
            yield w, k, i, self.decode(*read.take(s, row))


def _rows(column: pa.Array) -> list:
    """A column's values row by row: bytes and strings as Python objects, fixed-size
    lists (cached arrays) as numpy rows."""
    if pa.types.is_fixed_size_list(column.type):
        flat = column.flatten().to_numpy(zero_copy_only=False)
        return list(flat.reshape(len(column), column.type.list_size))
    return column.to_pylist()


class _ShardReader:
    """Reads one worker's shards in order, `READ_ROWS` rows at a time, keeping the
    values (of `columns`) of the rows still needed until they are taken as many times
    as `needed` counts."""

    def __init__(self, index: ShardIndex, shard_order: list[int], needed: Counter,
                 columns: tuple[str, ...]) -> None:  # fmt: skip
        self.index, self.needed, self.columns = index, needed, columns
        self.shards = iter(dict.fromkeys(shard_order))  # the worker's shards, in its order
        self.batches: Iterator | None = None
        self.current = -1
        self.row = 0
        self.held: dict[tuple[int, int], tuple] = {}

    def take(self, shard: int, row: int) -> tuple:
        while (shard, row) not in self.held:
            self._read_more()
        self.needed[(shard, row)] -= 1
        if self.needed[(shard, row)]:
            return self.held[(shard, row)]
        return self.held.pop((shard, row))

    def _read_more(self) -> None:
        batch = next(self.batches, None) if self.batches is not None else None
        if batch is None:
            self.current = next(self.shards)
            self.row = 0
            file = pq.ParquetFile(self.index.paths[self.current])
            self.batches = file.iter_batches(batch_size=READ_ROWS, columns=list(self.columns))
            return
        values = list(zip(*(_rows(batch.column(c)) for c in self.columns), strict=True))
        for value in values:
            if (self.current, self.row) in self.needed:
                self.held[(self.current, self.row)] = value
            self.row += 1


@dataclass(frozen=True)
class _Image:
    """An image row's encoded bytes -> (uint8 (3, size, size),)."""

    size: int

    def __call__(self, data: bytes) -> tuple[torch.Tensor]:
        image = imaging.fitted_array(data, self.size)  # (size, size, 3)
        return (torch.from_numpy(image).permute(2, 0, 1),)


@dataclass(frozen=True)
class _Latent:
    """A cached latent row -> (its latent times `scale` (C, h, w), its pooled edge map
    (1, h, w)), both float32 (`recaption.latents` writes them)."""

    scale: float

    def __call__(self, shape: str, latent: np.ndarray, edge: np.ndarray) -> tuple:
        c, h, w = (int(x) for x in shape.split(","))
        z = torch.from_numpy(np.array(latent, dtype=np.float32).reshape(c, h, w))
        e = torch.from_numpy(np.array(edge, dtype=np.float32).reshape(1, h, w))
        return z * self.scale, e


@dataclass(frozen=True)
class _Features:
    """An embeddings row (`recaption.embed`'s shards: pooled vector and grid cells, float16)
    -> (its features side by side, float32 (D [+ G*G*C]),), as `Embeddings.features`."""

    def __call__(self, *parts: np.ndarray) -> tuple[torch.Tensor]:
        return (torch.from_numpy(np.concatenate(parts).astype(np.float32)),)


def streams(mode: str, memory_gb: float, held_bytes: int) -> bool:
    """Whether training data that would take `held_bytes` in memory is streamed
    (`data.stream`'s `mode` and `memory_gb`; auto: when it takes more than that)."""
    if mode != "auto":
        return mode == "always"
    return held_bytes > int(memory_gb * (1 << 30))


class Stream:
    """Training data of sharded rows, batch by batch, for any step.

    `batch(step)` gives (training indices, tensors) of a step: one stacked tensor per
    value the rows decode to. Steps are taken in order after the first, so a run reads
    each epoch once (resuming at a step skips ahead without decoding). An epoch is
    `steps_per_epoch` whole batches; the remainder of its rows is not used, as in memory.
    """

    columns: tuple[str, ...] = ()

    def __init__(self, index: ShardIndex, decode, batch_size: int, seed: int, buffer: int,
                 workers: int) -> None:  # fmt: skip
        if buffer < 1:
            raise ValueError(f"shuffle buffer must be at least 1 row, not {buffer}")
        self.index, self.decode, self.batch_size = index, decode, batch_size
        self.seed, self.buffer, self.workers = seed, buffer, workers
        self.rows: Iterator[tuple[int, tuple[torch.Tensor, ...]]] = iter(())
        self.next_step = -1
        self.last: tuple[int, tuple[list[int], tuple[torch.Tensor, ...]]] | None = None

    def __len__(self) -> int:
        return self.index.size

    def identity(self) -> list:
        """What the stream yields, for the folder a killed run resumes from: its shards'
        bytes (sha256), the rows it reads, its columns and its order's settings."""
        shards = [io.sha256_file(p) for p in self.index.paths]
        return [type(self).__name__, shards, self.index.rows, self.columns, repr(self.decode),
                self.batch_size, self.seed, self.buffer, self.workers]  # fmt: skip

    def epoch_order(self, epoch: int) -> list[int]:
        """The training indices of an epoch, in the order the stream yields them."""
        sequences = worker_sequences(self.index, self.seed, epoch, self.buffer, self.workers)
        lengths = [len(s) for s in sequences]
        return [sequences[w][k][2] for w, k in round_robin(lengths)]

    def batch(self, step: int) -> tuple[list[int], tuple[torch.Tensor, ...]]:
        """(training indices, stacked tensors) of step `step`; asked again for the same
        step (each micro-batch of gradient accumulation), the same batch."""
        if self.last is not None and self.last[0] == step:
            return self.last[1]
        if step != self.next_step or step % steps_per_epoch(len(self), self.batch_size) == 0:
            self._open(step)
        items = [next(self.rows) for _ in range(min(self.batch_size, len(self)))]
        self.next_step = step + 1
        stacked = tuple(torch.stack(parts) for parts in zip(*(x for _, x in items), strict=True))
        self.last = (step, ([i for i, _ in items], stacked))
        return self.last[1]

    def _open(self, step: int) -> None:
        """Start reading the epoch of `step` at its batch."""
        n = len(self)
        epoch = epoch_of(n, self.batch_size, step)
        first = (step % steps_per_epoch(n, self.batch_size)) * min(self.batch_size, n)
        sequences = worker_sequences(self.index, self.seed, epoch, self.buffer, self.workers)
        order = round_robin([len(s) for s in sequences])
        skip = [0] * len(sequences)
        for w, _ in order[:first]:
            skip[w] += 1
        rows = _EpochRows(self.index, sequences, skip, self.columns, self.decode)
        loader = DataLoader(rows, batch_size=None, num_workers=self.workers)
        self.rows = _in_order(iter(loader), order[first:])


class ImageStream(Stream):
    """The training images of a sharded dataset: a batch is (uint8 (B, 3, size, size),)."""

    columns = ("image",)

    def __init__(self, index: ShardIndex, size: int, batch_size: int, seed: int, buffer: int,
                 workers: int) -> None:  # fmt: skip
        super().__init__(index, _Image(size), batch_size, seed, buffer, workers)
        self.size = size


class FeatureStream(Stream):
    """The cached image features of the training pairs (`recaption.embed`'s shards, with
    their grid cells when `grid`): a batch is (float32 (B, D [+ G*G*C]),)."""

    def __init__(self, index: ShardIndex, grid: bool, batch_size: int, seed: int, buffer: int,
                 workers: int) -> None:  # fmt: skip
        super().__init__(index, _Features(), batch_size, seed, buffer, workers)
        self.columns = ("embedding", "grid") if grid else ("embedding",)


class LatentStream(Stream):
    """The cached latents of the training images (`recaption.latents`'s shards): a batch
    is (latents times `scale` (B, C, h, w), pooled edge maps (B, 1, h, w))."""

    columns = ("shape", "latent", "edge")

    def __init__(self, index: ShardIndex, scale: float, batch_size: int, seed: int,
                 buffer: int, workers: int) -> None:  # fmt: skip
        super().__init__(index, _Latent(scale), batch_size, seed, buffer, workers)


def _in_order(
    items: Iterator[tuple[int, int, int, tuple]], order: list[tuple[int, int]]
) -> Iterator[tuple[int, tuple]]:
    """(training index, tensors) in `order` of (worker, item number), whatever order the
    loader delivers its workers' items in (a resumed epoch starts mid-cycle; the loader
    always starts at worker 0): a few items wait until their turn."""
    early: dict[tuple[int, int], tuple[int, tuple]] = {}
    for position in order:
        while position not in early:
            w, k, i, values = next(items)
            early[(w, k)] = (i, values)
        yield early.pop(position)

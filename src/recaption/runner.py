"""Resumable, chunked work over the dataset's keys.

Per-image stages (recaption, upsample_captions, evaluate) split the keys into fixed
chunks and write each finished chunk to a work folder as soon as it comes back from
the engine (`engine.map_units`: this process or a Ray cluster). A chunk's file name
carries a hash of what it was computed from (the stage's fingerprint and the chunk's
keys), so a rerun after an interruption reuses exactly the chunks that are still
valid and computes the rest; the stage then writes its output from the chunks in key
order, so it is byte-identical to an uninterrupted run on either engine.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recaption import engine, io
from recaption.params import Params

log = logging.getLogger(__name__)


@dataclass
class ChunkRun:
    """The output of `run_chunks`: every chunk's rows in key order, and what was reused."""

    table: pa.Table
    computed: int  # chunks computed in this run
    reused: int  # chunks a previous, interrupted run had finished


def chunk_file(index: int, keys: Sequence[str], fingerprint: str) -> str:
    digest = io.sha256_bytes("\n".join([fingerprint, *keys]).encode())[:16]
    return f"chunk-{index:05d}-{digest}.parquet"


def run_chunks(
    keys: Sequence[str],
    chunk_size: int,
    work_dir: str | Path,
    fingerprint: str,
    worker: type[engine.Worker],
    kwargs: dict[str, Any],
    params: Params,
    desc: str = "chunks",
) -> ChunkRun:
    """Run the stage's worker over `keys` in chunks, on the params' engine, resuming
    finished chunks.

    Args:
        keys: the keys to process, in the order the output should have.
        work_dir: where finished chunks wait; files of other runs are removed.
        fingerprint: everything the results depend on besides the keys (models,
            params, inputs' hashes): a change invalidates every chunk.
        worker: built as `worker(**kwargs)`; called with {"index": i, "keys": [...]},
            it returns the chunk's rows (same schema for every chunk).
    """
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    chunks = [list(keys[i : i + chunk_size]) for i in range(0, len(keys), chunk_size)]
    names = [chunk_file(i, c, fingerprint) for i, c in enumerate(chunks)]
    for stale in set(p.name for p in work.iterdir()) - set(names):
        path = work / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    todo = [i for i, name in enumerate(names) if not (work / name).is_file()]
    reused = len(chunks) - len(todo)
    if reused:
        log.info("%s: reused %d finished chunks of %d", desc, reused, len(chunks))
    units = [{"index": i, "keys": chunks[i]} for i in todo]
    for position, table in engine.map_units(worker, kwargs, units, params, desc, "chunk"):
        index = todo[position]
        if table.column("key").to_pylist() != chunks[index]:
            raise RuntimeError(f"chunk {index}: the worker returned rows for other keys")
        io.write_table(work / names[index], table)  # atomic: never half a chunk
    tables = [pq.read_table(work / name) for name in names]
    table = pa.concat_tables(tables) if tables else pa.table({"key": pa.array([], pa.string())})
    return ChunkRun(table, len(todo), reused)


def clear(work_dir: str | Path) -> None:
    """Remove a work folder once the stage's output is safely written."""
    shutil.rmtree(work_dir, ignore_errors=True)


def finish(run: ChunkRun, output: str | Path, work_dir: str | Path) -> dict[str, int]:
    """Write the run's rows to `output` (atomically), then remove the work folder; returns
    the counts a stage reports: images, chunks computed and chunks reused."""
    io.write_table(output, run.table)
    clear(work_dir)
    return {"images": run.table.num_rows, "chunks_computed": run.computed,
            "chunks_reused": run.reused}  # fmt: skip

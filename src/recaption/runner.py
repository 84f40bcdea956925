"""Resumable, chunked work over the dataset's keys.

Per-image stages (recaption today) split the keys into fixed chunks and write
each finished chunk to a work folder. A chunk's file name carries a hash of what
it was computed from (the stage's fingerprint and the chunk's keys), so a rerun
after an interruption reuses exactly the chunks that are still valid and
computes the rest; the stage then writes its output from the chunks in key
order, so it is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from recaption import io

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
    compute: Callable[[int, list[str]], pa.Table],
    desc: str = "chunks",
) -> ChunkRun:
    """Run `compute(chunk_index, chunk_keys)` over `keys` in chunks, resuming finished ones.

    Args:
        keys: the keys to process, in the order the output should have.
        work_dir: where finished chunks wait; files of other runs are removed.
        fingerprint: everything the results depend on besides the keys (models,
            params, inputs' hashes): a change invalidates every chunk.
        compute: returns the chunk's rows as a table (same schema for every chunk).
    """
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    chunks = [list(keys[i : i + chunk_size]) for i in range(0, len(keys), chunk_size)]
    names = [chunk_file(i, c, fingerprint) for i, c in enumerate(chunks)]
    for stale in set(p.name for p in work.iterdir()) - set(names):
        path = work / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    tables, computed, reused = [], 0, 0
    todo = list(enumerate(zip(chunks, names, strict=True)))
    for index, (chunk, name) in tqdm(todo, desc=desc, unit="chunk"):
        path = work / name
        if path.is_file():
            tables.append(pq.read_table(path))
            reused += 1
            continue
        table = compute(index, chunk)
        if table.column("key").to_pylist() != chunk:
            raise RuntimeError(f"chunk {index}: compute() returned rows for other keys")
        io.write_table(path, table)  # atomic: a killed run never leaves half a chunk
        tables.append(table)
        computed += 1
    if reused:
        log.info("%s: reused %d finished chunks of %d", desc, reused, len(chunks))
    table = pa.concat_tables(tables) if tables else pa.table({"key": pa.array([], pa.string())})
    return ChunkRun(table, computed, reused)


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

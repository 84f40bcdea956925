"""upsample_captions: the upsampler's rewrite of every dataset image's ground truth.

Only with `blend.use_upsampled: true`; otherwise the stage writes an empty table at
once (a DVC stage cannot be switched off, and blend then reads nothing from it).
The rewrites are made in resumable chunks, like recaption's: a killed run restarts
at its chunk and writes the bytes an uninterrupted run writes.

Output: data/captions/upsampled.parquet with key, ground_truth, upsampled, the content
hash of the upsampler that wrote them and the recipe (everything else a rewrite is a
function of). It is a persistent DVC output and its own cache, as recaption's is: with
greedy or beam decoding a ground truth already rewritten under the same recipe keeps
its rewrite, so after the dataset grows only the new texts are rewritten. That holds
because a rewrite does not depend on its batch: texts are batched only with texts whose
prompts have the same length, so no row is padded (`rewrite_each`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recaption import datasets, devices, io, lineage, paths, runner
from recaption.models import upsampler as up_lib
from recaption.params import Params, load_params

log = logging.getLogger(__name__)
WORK_DIR = paths.WORK / "upsample_captions"
SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("ground_truth", pa.string()),
        ("upsampled", pa.string()),
        ("upsampler", pa.string()),
        ("recipe", pa.string()),
    ]
)
# Part of every rewrite's recipe: bump it whenever rewriting changes, so rewrites made the
# old way are never reused as if they were current. 1: batches of one prompt length.
RECIPE_VERSION = 1


def rewrite_each(
    model: up_lib.Upsampler, texts: Sequence[str], batch_size: int, seed: int
) -> list[str]:
    """The rewrites of `texts`, in order, each independent of the others: texts are batched
    only with texts whose prompts have as many tokens (a left-padded row's numbers, and
    so its greedy rewrite, can depend on the longer rows beside it). With sampling, the
    batches of prompt length n draw from seed + 1,000 x n."""
    by_length: dict[int, list[int]] = {}  # prompt tokens -> the texts' positions
    for i, text in enumerate(texts):
        by_length.setdefault(len(model.prompt_ids(text)), []).append(i)
    out: list[str] = [""] * len(texts)
    for length, rows in sorted(by_length.items()):
        rewrites = model.rewrite([texts[i] for i in rows], None, batch_size, seed + 1000 * length)
        for i, rewrite in zip(rows, rewrites, strict=True):
            out[i] = rewrite
    return out


class Worker:
    """The upsampler and the ground truth, loaded once; one chunk of rewrites per call."""

    def __init__(self, params: Params):
        self.us, self.seed = params.upsample, params.seed
        self.model = up_lib.load(paths.UPSAMPLER)
        self.model.lm.to(devices.resolve(self.us.device, "upsample.device"))
        self.truth = ground_truth()

    def __call__(self, unit: dict) -> pa.Table:
        index, chunk = unit["index"], unit["keys"]
        texts = sorted({self.truth[k] for k in chunk})  # a text shared by images: once
        seed = self.seed * 1_000_003 + index * 10_007  # a chunk's draw never depends on others
        rewrites = dict(zip(texts, rewrite_each(self.model, texts, self.us.generate_batch_size,
                                                seed), strict=True))  # fmt: skip
        return pa.table({"key": pa.array(chunk, pa.string()),
                         "upsampled": pa.array([rewrites[self.truth[k]] for k in chunk],
                                               pa.string())})  # fmt: skip


def ground_truth() -> dict[str, str]:
    """Key -> ground-truth caption of every dataset image, in the dataset's order."""
    return {r["key"]: r["caption"] for r in datasets.load_rows(paths.DATASET, ["caption"])}


def recipe(upsampler: str) -> str:
    """The hash of everything a greedy or beam rewrite is a function of besides its text:
    the upsampler (its weights, tokenizer, instruction and decoding) and how it is run.
    Not the batch: rows rewrite independently (`rewrite_each`)."""
    return io.sha256_bytes(
        json.dumps({"upsampler": upsampler, "version": RECIPE_VERSION}, sort_keys=True).encode()
    )


def samples() -> bool:
    """Whether the saved upsampler draws its rewrites (then a rewrite depends on its batch's
    draw and is never reused)."""
    config = json.loads((paths.UPSAMPLER / up_lib.CONFIG_NAME).read_text())
    return config["decoding"]["strategy"] == "sample"


def previous_rewrites(path: Path, recipe: str) -> dict[str, str]:
    """Ground truth -> rewrite of the previous output's rows, if it was made under `recipe`;
    empty otherwise (no output yet, another recipe, an older schema, an empty table)."""
    if not path.is_file() or "recipe" not in pq.read_schema(path).names:
        return {}
    table = pq.read_table(path, columns=["ground_truth", "upsampled", "recipe"])
    if set(table.column("recipe").unique().to_pylist()) != {recipe}:
        return {}
    columns = [table.column(c).to_pylist() for c in ("ground_truth", "upsampled")]
    return dict(zip(*columns, strict=True))


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    if not params.blend.use_upsampled:
        io.write_table(paths.UPSAMPLED_CAPTIONS, SCHEMA.empty_table())
        runner.clear(WORK_DIR)
        log.info("upsample_captions: blend.use_upsampled is false, nothing to rewrite")
        return {"images": 0}
    us = params.upsample
    upsampler = lineage.tree_hash(paths.UPSAMPLER)
    made_under = recipe(upsampler)
    old = previous_rewrites(paths.UPSAMPLED_CAPTIONS, made_under)
    if samples():
        old = {}
        log.info("upsample_captions: the upsampler samples, so no rewrite is reused")
    truth = ground_truth()
    keys = list(truth)
    todo = [k for k in keys if truth[k] not in old]
    # A chunk's rows also depend on its texts and, when sampling, on its batches and seed.
    batching = {"batch_size": us.generate_batch_size, "chunk_size": us.chunk_size,
                "seed": params.seed,
                "texts": io.sha256_bytes("\n".join(truth[k] for k in todo).encode())}  # fmt: skip
    fingerprint = io.sha256_bytes(json.dumps([made_under, batching], sort_keys=True).encode())
    run = runner.run_chunks(
        todo, us.chunk_size, WORK_DIR, fingerprint, Worker, {"params": params}, params, "upsample"
    )
    fresh = {row["key"]: row["upsampled"] for row in run.table.to_pylist()}
    rewrites = [fresh[k] if k in fresh else old[truth[k]] for k in keys]
    n = len(keys)
    columns = [keys, [truth[k] for k in keys], rewrites, [upsampler] * n, [made_under] * n]
    table = pa.Table.from_arrays([pa.array(c, pa.string()) for c in columns], schema=SCHEMA)
    io.write_table(paths.UPSAMPLED_CAPTIONS, table)
    runner.clear(WORK_DIR)
    summary = {"images": n, "rewritten": len(todo), "reused": n - len(todo),
               "chunks_computed": run.computed, "chunks_reused": run.reused,
               "upsampler": upsampler}  # fmt: skip
    log.info("upsample_captions: %s", summary)
    return summary

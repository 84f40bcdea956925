"""upsample_captions: the upsampler's rewrite of every dataset image's ground truth.

Only with `blend.use_upsampled: true`; otherwise the stage writes an empty table at
once (a DVC stage cannot be switched off, and blend then reads nothing from it).
The rewrites are made in resumable chunks, like recaption's: a killed run restarts
at its chunk and writes the bytes an uninterrupted run writes.

Output: data/captions/upsampled.parquet with key, ground_truth, upsampled and the
content hash of the upsampler that wrote them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa

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
    ]
)


class Worker:
    """The upsampler and the ground truth, loaded once; one chunk of rewrites per call."""

    def __init__(self, params: Params):
        self.us, self.seed = params.upsample, params.seed
        self.model = up_lib.load(paths.UPSAMPLER)
        self.model.lm.to(devices.resolve(self.us.device, "upsample.device"))
        self.upsampler = lineage.tree_hash(paths.UPSAMPLER)
        self.truth = ground_truth()

    def __call__(self, unit: dict) -> pa.Table:
        index, chunk = unit["index"], unit["keys"]
        sources = [self.truth[k] for k in chunk]
        seed = self.seed * 1_000_003 + index * 10_007  # a chunk's draw never depends on others
        rewrites = self.model.rewrite(
            sources, None, self.us.generate_batch_size, seed, desc=f"upsample chunk {index}"
        )
        columns = [chunk, sources, rewrites, [self.upsampler] * len(chunk)]
        return pa.Table.from_arrays([pa.array(c, pa.string()) for c in columns], schema=SCHEMA)


def ground_truth() -> dict[str, str]:
    """Key -> ground-truth caption of every dataset image, in the dataset's order."""
    return {r["key"]: r["caption"] for r in datasets.load_rows(paths.DATASET, ["caption"])}


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    if not params.blend.use_upsampled:
        io.write_table(paths.UPSAMPLED_CAPTIONS, SCHEMA.empty_table())
        runner.clear(WORK_DIR)
        log.info("upsample_captions: blend.use_upsampled is false, nothing to rewrite")
        return {"images": 0}
    us = params.upsample
    upsampler = lineage.tree_hash(paths.UPSAMPLER)
    truth = ground_truth()
    keys = list(truth)
    fingerprint = io.sha256_bytes(
        json.dumps(
            {
                "upsampler": upsampler,
                "captions": io.sha256_bytes("\n".join(truth[k] for k in keys).encode()),
                "batch_size": us.generate_batch_size,  # batches are seeded by position
                "seed": params.seed,
            },
            sort_keys=True,
        ).encode()
    )
    run = runner.run_chunks(
        keys, us.chunk_size, WORK_DIR, fingerprint, Worker, {"params": params}, params, "upsample"
    )
    summary = {**runner.finish(run, paths.UPSAMPLED_CAPTIONS, WORK_DIR), "upsampler": upsampler}
    log.info("upsample_captions: %s", summary)
    return summary

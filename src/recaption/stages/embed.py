"""embed: CLIP embeddings of every dataset image (computed once per pixels and CLIP) and
of the evaluation prompts. With `captioner.kind: vlm` the images' cache holds the VLM's
frozen vision-tower features instead (computed once per pixels and tower); the prompts
are still CLIP's.

data/embeddings/ is a persistent DVC output: its previous shards are the cache,
so after the dataset grows only the new images go through the model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recaption import devices, embed, io, paths
from recaption.models import clip as clip_lib
from recaption.models import vision_tower
from recaption.params import load_params

log = logging.getLogger(__name__)


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    ep = params.embed
    device = devices.resolve(ep.device, "embed.device")
    clip = clip_lib.load(paths.CLIP)
    # Shards record the CLIP and the embedding procedure: a change to either recomputes all.
    fingerprint = embed.cache_fingerprint(clip_lib.fingerprint(paths.CLIP), ep.grid)
    encoder, image_fingerprint, grid, load = clip, fingerprint, ep.grid, None
    if params.captioner.kind == "vlm":  # the images go through the VLM's frozen tower
        encoder = vision_tower.load(params.captioner.lm)
        image_fingerprint, grid = embed.cache_fingerprint(encoder.fingerprint(), 0), 0
        load = partial(vision_tower.load, params.captioner.lm)  # what Ray replicas run
    workers = ep.num_workers
    if workers == "auto":
        workers = 0 if device == "cpu" else min(8, max(1, (os.cpu_count() or 2) - 1))
    result = embed.embed_dataset(
        encoder,
        image_fingerprint,
        paths.DATASET,
        paths.IMAGE_EMBEDDINGS,
        ep.batch_size,
        workers,
        device,
        grid,
        params,
        paths.CLIP,
        load,
    )
    io.write_table(paths.PROMPT_EMBEDDINGS, prompt_table(clip, fingerprint, device))
    # The report describes the output, not this run: what was computed or reused depends
    # on what an earlier (perhaps killed) run left, so it goes to the log and the caller.
    report = {"images": result.images, "shards": len(io.shard_paths(paths.IMAGE_EMBEDDINGS)),
              "clip": image_fingerprint, "grid": grid}  # fmt: skip
    if params.captioner.kind == "vlm":
        report["vision_tower"] = params.captioner.lm
    io.write_json(paths.EMBED_CACHE_REPORT, report)
    return {**report, **asdict(result)}


def prompt_table(clip: clip_lib.Clip, fingerprint: str, device: str) -> pa.Table:
    """Text embeddings of each evaluation prompt, as written and in descriptive form."""
    suite = pq.read_table(paths.PROMPTS, columns=["id", "prompt", "descriptive"]).to_pylist()
    ids = [p["id"] for p in suite] * 2
    kinds = ["prompt"] * len(suite) + ["descriptive"] * len(suite)
    texts = [p["prompt"] for p in suite] + [p["descriptive"] for p in suite]
    vectors = embed.embed_texts(clip, texts, device=device)
    table = embed.to_table(embed.Embeddings(ids, texts, fingerprint, vectors))
    table = table.rename_columns(["id", "text", "clip", "embedding"])
    return table.add_column(1, "kind", pa.array(kinds, pa.string()))

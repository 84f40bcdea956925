"""Benchmark incremental recaptioning: `recap recaption` after the dataset grows by 1 %,
against the full run, and the fixed start-up cost of a run that decodes nothing.

    .venv/bin/python benchmarks/recaption_incremental.py [--images 100000] [--verify]

In a scratch folder: cached embeddings of `--images` images (random vectors of the
default CLIP's layout, params' embed.grid) and the default captioner architecture with
random weights for stages 1 and 2, the params' decoding (greedy), on the CPU.
1. `recap recaption` on every image: the full run.
2. The same again, nothing changed: the fixed cost (start-up, reading, writing, tags).
3. 1 % new images (a new embeddings shard): the incremental run.
4. With `--verify`: the grown dataset from scratch, and whether its synthetic.parquet
   and tags.parquet equal the incremental run's byte for byte.
Random weights rarely emit the end token, so every caption runs to max_new_tokens: the
full run is the slowest a trained captioner's would be; the fixed cost does not depend
on it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from recaption import embed, io, paths
from recaption.models import captioner as captioner_lib
from recaption.models import clip as clip_lib

from common import ROOT, incremental_figures, timed

SHARD = 10_000  # embedding rows per shard, as embed writes one per dataset shard
TEXTS = ["a red circle on a gray background", "two blue squares", 'the letter "K" in green']


def write_embeddings(folder: Path, start: int, n: int, shard: int, layout: tuple) -> None:
    """Shards from index `shard` on, holding images start..start+n-1: random float16
    features of the (pooled dim, grid cells, cell dim) `layout`."""
    pooled, width = layout[0], layout[0] + layout[1] * layout[2]
    folder.mkdir(parents=True, exist_ok=True)
    for offset in range(0, n, SHARD):
        ids = range(start + offset, start + min(n, offset + SHARD))
        rng = np.random.default_rng(ids[0])
        features = rng.standard_normal((len(ids), width)).astype(np.float16)
        keys = [f"{i:08d}" for i in ids]
        shas = [io.sha256_bytes(k.encode()) for k in keys]
        emb = embed.Embeddings(keys, shas, "bench-clip", features[:, :pooled], features[:, pooled:])
        io.write_shard(folder, shard + offset // SHARD, embed.to_table(emb))


def prepare(folder: Path, images: int) -> dict:
    """params.yaml, the embeddings of `images` images and two random captioners."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["recaption"]["device"] = "cpu"
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    clip = clip_lib.create(str(ROOT / params["clip"]["model"]), None)
    layout = clip_lib.feature_layout(clip, params["embed"]["grid"])  # (D, cells, C)
    cp = params["captioner"]
    for seed, stage in enumerate(("stage1", "stage2")):
        model = captioner_lib.create(
            str(ROOT / cp["lm"]), TEXTS, cp["vocab_size"], layout, cp["prefix_length"],
            cp["mapper_hidden"], seed,
        )  # fmt: skip
        model.save(folder / paths.CAPTIONER / stage)
    return {"layout": layout, "params": params}


def recaption(folder: Path) -> tuple[float, float, dict]:
    """(seconds, peak MiB, the stage's summary) of one `recap recaption`."""
    log: list[str] = []
    seconds, mib = timed(["recap", "recaption"], folder, stderr=log)
    decoded = re.search(r"'decoded': (\d+), 'reused': (\d+)", log[0])
    return seconds, mib, {"decoded": int(decoded[1]), "reused": int(decoded[2])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--verify", action="store_true", help="also run the grown set afresh")
    args = parser.parse_args(argv)
    added = max(1, args.images // 100)
    with tempfile.TemporaryDirectory(prefix="recap-bench-") as tmp:
        folder = Path(tmp)
        setup = prepare(folder, args.images)
        emb_dir, shards = folder / paths.IMAGE_EMBEDDINGS, -(-args.images // SHARD)
        write_embeddings(emb_dir, 0, args.images, 0, setup["layout"])
        runs = {"full": recaption(folder), "unchanged": recaption(folder)}
        write_embeddings(emb_dir, args.images, added, shards, setup["layout"])
        runs["more"] = recaption(folder)
        same = None
        if args.verify:
            outputs = [folder / paths.SYNTHETIC_CAPTIONS, folder / paths.CAPTION_TAGS]
            incremental = [p.read_bytes() for p in outputs]
            shutil.rmtree(folder / paths.CAPTIONS)
            recaption(folder)
            same = [p.read_bytes() for p in outputs] == incremental
    rp = setup["params"]["recaption"]
    result = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "feature_layout": setup["layout"],
        "batch_size": rp["batch_size"],
        "max_new_tokens": [rp["short"]["max_new_tokens"], rp["descriptive"]["max_new_tokens"]],
        **incremental_figures(args.images, added, runs, "decoded"),
        "incremental_bytes_equal_full_run": same,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

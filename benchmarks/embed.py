"""Benchmark the embed stage: throughput against the bare forward pass, peak memory at
100,000 images, and the cost of embedding 1 % new images after a full run.

    .venv/bin/python benchmarks/embed.py [--images 100000] [--compare 5000] [--device cpu]

1. Throughput: on `--compare` images, the library's embed_dataset (decoding PNGs in
   DataLoader workers beside the forward pass) against the same model's batched
   forward on tensors already in memory, in the same process, same batch size.
2. `recap embed` on `--images` images in a scratch DVC repo: wall time, peak RSS
   of the process tree.
3. The dataset grows by 1 %; `recap embed` again: wall time against the full run.
The CLIP is the default architecture with random weights: speed does not depend on them.
On a GPU machine pass `--device cuda` (half precision, channels-last).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

import torch
import yaml

from recaption import embed, paths
from recaption.datasets import images_tensor, load_rows
from recaption.models import clip as clip_lib

from common import make_repo, timed, write_params


def bare_forward(clip, repo: Path, n: int, batch: int, device: str, grid: int) -> float:
    """images/s of the model alone on normalised tensors already in memory."""
    rows = load_rows(repo / paths.DATASET, ["image"])[:n]
    x = clip.normalise(images_tensor([r["image"] for r in rows], clip.image_size))
    dev = torch.device(device)
    model_dtype = torch.half if dev.type == "cuda" else torch.float32
    with torch.inference_mode():
        clip_lib.features(clip, x[:batch].to(dev, model_dtype), grid)  # warm-up
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            clip_lib.features(clip, x[i : i + batch].to(dev, model_dtype), grid)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    return len(x) / (time.perf_counter() - start)


def stage_throughput(
    clip, repo: Path, n: int, batch: int, workers: int, device: str, grid: int
) -> float:
    """images/s of embed_images over the first n dataset images, decoding included."""
    shards = [repo / "data" / "dataset" / "part-00000.parquet"]
    dataset = embed.ShardImages(shards, [(0, r) for r in range(n)], clip.image_size)
    embed.embed_images(
        clip, embed.ShardImages(shards, [(0, 0)], clip.image_size), batch, 0, device, grid
    )  # warm-up, as for the bare forward
    start = time.perf_counter()
    embed.embed_images(clip, dataset, batch, workers, device, grid)
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--compare", type=int, default=5000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    args = parser.parse_args(argv)
    overrides = {
        "data": {"shard_size": 10_000},
        "data.synthetic": {"num_images": args.images},
        "embed": {"device": args.device},
    }
    with tempfile.TemporaryDirectory(prefix="recap-bench-") as tmp:
        repo = make_repo(Path(tmp), overrides)
        for stage in ("ingest", "prompts", "sample"):
            timed(["recap", stage], repo)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        clip = clip_lib.create(str(repo / params["clip"]["model"]), None)
        clip_lib.save(clip, repo / paths.CLIP)
        ep = params["embed"]
        if args.device == "cuda":
            clip.model.half().cuda().to(memory_format=torch.channels_last)
        n = min(args.compare, 10_000)
        workers = args.workers
        stage_ips = stage_throughput(
            clip, repo, n, ep["batch_size"], workers, args.device, ep["grid"]
        )
        bare_ips = bare_forward(clip, repo, n, ep["batch_size"], args.device, ep["grid"])
        full_s, full_mib = timed(["recap", "embed"], repo)
        overrides["data.synthetic"] = {"num_images": args.images + args.images // 100}
        write_params(repo, overrides)
        timed(["recap", "ingest"], repo)
        log: list[str] = []
        more_s, _ = timed(["recap", "embed"], repo, stderr=log)
        # The stage logs what it computed and reused (its report describes the output only).
        counts = re.search(r"(\d+) computed, (\d+) reused", log[0])
    result = {
        "device": args.device,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "batch_size": ep["batch_size"],
        "num_workers": workers,
        "grid": ep["grid"],
        "compare_images": n,
        "stage_images_per_s": round(stage_ips, 1),
        "bare_forward_images_per_s": round(bare_ips, 1),
        "stage_over_bare": round(stage_ips / bare_ips, 3),
        "full_images": args.images,
        "full_embed_s": round(full_s, 1),
        "full_embed_peak_rss_mib": round(full_mib),
        "plus_1pct_embed_s": round(more_s, 1),
        "plus_1pct_over_full": round(more_s / full_s, 3),
        "plus_1pct_computed": int(counts[1]),
        "plus_1pct_reused": int(counts[2]),
    }
    if args.device == "cuda":  # benchmarks/gpu_check.sh: proof the GPU did the work
        result["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

"""Benchmark the whole pipeline on 100,000 built-in images: every stage's wall time and
peak memory, DVC's own overhead, the cost of 1 % new images, and Ray against local.

    .venv/bin/python benchmarks/pipeline_100k.py [--images 100000] [--ray-images 10000]

Runs in a fresh temporary git + DVC repository built from this checkout (nothing here
is touched):

1. `dvc repro -s <stage>` for each stage in pipeline order: wall time and peak RSS of
   the whole process tree (dvc, the stage, its workers, summed; sampled every 0.1 s).
   Training stages keep their data but train few steps (`--light`, the default): their
   cost is set by steps, not by the dataset's size, and is measured in the other
   benchmarks; the per-image stages run in full.
2. `dvc status` and a no-op `dvc repro` on the finished pipeline (best of 3).
3. The dataset grows by 1 %: `dvc repro -s ingest`, then `dvc repro -s embed`, timed
   against the full embed.
4. Ray against local on the same machine: `recap embed` (from an empty cache) and
   `recap recaption` with `engine: local` and `engine: ray` on the first
   `--ray-images` images' worth of work (a second repo of that size).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from common import make_repo, timed, write_params

# Few training steps: the per-image stages are what grows with the dataset.
LIGHT = {
    "clip.train": {"steps": 20},
    "captioner.pretrain": {"steps": 20},
    "captioner.stage1": {"steps": 20},
    "captioner.stage2": {"steps": 20},
    "upsample": {"steps": 20},
    "generator": {"steps": 20, "checkpoint_every": 0},
    "evaluate.oracle": {"steps": 20, "train_size": 2000, "min_accuracy": 0.0},
    "evaluate.clip": {"steps": 20, "train_size": 2000},
    "evaluate": {"steps": 5, "images_per_prompt": 1},
}


def stages(repo: Path) -> list[str]:
    """The stage names of dvc.yaml, in the file's (topological) order."""
    return list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])


def repro_each(repo: Path) -> dict[str, dict[str, float]]:
    out = {}
    for stage in stages(repo):
        seconds, mib = timed(["dvc", "repro", "-s", stage], repo)
        out[stage] = {"s": round(seconds, 1), "peak_rss_mib": round(mib)}
        print(stage, out[stage], flush=True)
    return out


def overrides(images: int, light: bool) -> dict:
    base = {
        "data": {"image_size": 32, "shard_size": 10_000},
        "data.synthetic": {"num_images": images},
    }
    return {**base, **(LIGHT if light else {})}


def ray_against_local(tmp: Path, images: int, light: bool) -> dict:
    repo = make_repo(tmp / "ray", overrides(images, light))
    timed(["dvc", "repro", "recaption"], repo)
    out = {"images": images}
    for engine in ("local", "ray"):
        write_params(repo, {**overrides(images, light), "engine": engine})
        shutil.rmtree(repo / "data" / "embeddings" / "images")
        out[f"embed_{engine}_s"] = round(timed(["recap", "embed"], repo)[0], 1)
        out[f"recaption_{engine}_s"] = round(timed(["recap", "recaption"], repo)[0], 1)
        print(engine, out, flush=True)
    for stage in ("embed", "recaption"):
        out[f"{stage}_ray_over_local"] = round(out[f"{stage}_ray_s"] / out[f"{stage}_local_s"], 2)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--ray-images", type=int, default=10_000)
    parser.add_argument("--full-training", dest="light", action="store_false")
    args = parser.parse_args(argv)
    result: dict = {"images": args.images, "cpus": os.cpu_count(), "light": args.light}
    with tempfile.TemporaryDirectory(prefix="recap-bench-") as name:
        tmp = Path(name)
        (tmp / "main").mkdir()
        repo = make_repo(tmp / "main", overrides(args.images, args.light))
        result["stages"] = repro_each(repo)
        result["images_per_s"] = {
            s: round(args.images / result["stages"][s]["s"])
            for s in ("ingest", "embed", "recaption")
        }
        result["dvc_status_s"] = round(min(timed(["dvc", "status"], repo)[0] for _ in range(3)), 2)
        result["noop_repro_s"] = round(min(timed(["dvc", "repro"], repo)[0] for _ in range(3)), 2)
        grown = overrides(args.images + args.images // 100, args.light)
        write_params(repo, grown)
        timed(["dvc", "repro", "-s", "ingest"], repo)
        embed_s = timed(["dvc", "repro", "-s", "embed"], repo)[0]
        result["embed_after_1pct_s"] = round(embed_s, 1)
        result["embed_after_1pct_fraction"] = round(embed_s / result["stages"]["embed"]["s"], 3)
        print(json.dumps(result), flush=True)
        (tmp / "ray").mkdir()
        result["ray"] = ray_against_local(tmp, args.ray_images, args.light)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

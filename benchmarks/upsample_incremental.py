"""Benchmark incremental upsampling: `recap upsample-captions` after the dataset grows by
1 %, against the full run, and the fixed start-up cost of a run that rewrites nothing.

    .venv/bin/python benchmarks/upsample_incremental.py [--images 8000] [--verify]

In a scratch folder: the built-in world's dataset of `--images` images (`recap ingest`,
not timed), the trained upsampler of `make repro` (models/upsampler, copied), the
params' decoding (greedy) with `blend.use_upsampled: true`, on the CPU.
1. `recap upsample-captions` on every image: the full run.
2. The same again, nothing changed: the fixed cost (start-up, reading, writing).
3. 1 % more images (the world's next ones, ingested again): the incremental run.
4. With `--verify`: the grown dataset from scratch, and whether its upsampled.parquet
   equals the incremental run's byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import yaml

from recaption import paths

from common import ENV, ROOT, incremental_figures, timed


def write_params(folder: Path, images: int) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["synthetic"]["num_images"] = images
    params["blend"]["use_upsampled"] = True
    params["upsample"]["device"] = "cpu"
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def ingest(folder: Path, images: int) -> dict:
    params = write_params(folder, images)
    subprocess.run(["recap", "ingest"], cwd=folder, env=ENV, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return params


def upsample(folder: Path) -> tuple[float, float, dict]:
    """(seconds, peak MiB, the stage's summary) of one `recap upsample-captions`."""
    log: list[str] = []
    seconds, mib = timed(["recap", "upsample-captions"], folder, stderr=log)
    found = re.search(r"'rewritten': (\d+), 'reused': (\d+)", log[0])
    return seconds, mib, {"rewritten": int(found[1]), "reused": int(found[2])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8_000)
    parser.add_argument("--verify", action="store_true", help="also run the grown set afresh")
    args = parser.parse_args(argv)
    if not (ROOT / paths.UPSAMPLER).is_dir():
        raise SystemExit(f"no trained upsampler in {ROOT / paths.UPSAMPLER}: run make repro")
    added = max(1, args.images // 100)
    with tempfile.TemporaryDirectory(prefix="recap-bench-") as tmp:
        folder = Path(tmp)
        shutil.copytree(ROOT / paths.UPSAMPLER, folder / paths.UPSAMPLER)
        params = ingest(folder, args.images)
        runs = {"full": upsample(folder), "unchanged": upsample(folder)}
        ingest(folder, args.images + added)
        runs["more"] = upsample(folder)
        same = None
        if args.verify:
            output = folder / paths.UPSAMPLED_CAPTIONS
            incremental = output.read_bytes()
            output.unlink()
            upsample(folder)
            same = output.read_bytes() == incremental
    us = params["upsample"]
    result = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "generate_batch_size": us["generate_batch_size"],
        "max_new_tokens": us["decoding"]["max_new_tokens"],
        **incremental_figures(args.images, added, runs, "rewritten"),
        "incremental_bytes_equal_full_run": same,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

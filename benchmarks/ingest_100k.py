"""Benchmark: ingest 100,000 synthetic images at 32 px, then time `dvc status` on the result.

Runs in a fresh temporary git + DVC repository built from this checkout, so
nothing here is touched. Measures wall time and the peak resident memory of the
whole process tree (main process plus workers, summed), sampled every 0.1 s.

    .venv/bin/python benchmarks/ingest_100k.py [--images 100000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from common import make_repo, timed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=10_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="recap-bench-") as tmp:
        repo = make_repo(
            Path(tmp),
            {
                "data": {
                    "image_size": 32,
                    "num_workers": args.workers,
                    "shard_size": args.shard_size,
                },
                "data.synthetic": {"num_images": args.images},
            },
        )
        ingest_s, ingest_mib = timed(["recap", "ingest"], repo)
        repro_s, repro_mib = timed(["dvc", "repro", "ingest"], repo)
        status_s = min(timed(["dvc", "status"], repo)[0] for _ in range(3))
        size = sum(p.stat().st_size for p in (repo / "data" / "dataset").iterdir())
        result = {
            "images": args.images,
            "workers": args.workers,
            "cpus": os.cpu_count(),
            "recap_ingest_s": round(ingest_s, 1),
            "recap_ingest_peak_rss_mib": round(ingest_mib),
            "images_per_s": round(args.images / ingest_s),
            "dvc_repro_ingest_s": round(repro_s, 1),
            "dvc_repro_peak_rss_mib": round(repro_mib),
            "dvc_status_s": round(status_s, 2),
            "dataset_mib": round(size / 2**20, 1),
            "shards": len(list((repo / "data" / "dataset").glob("part-*.parquet"))),
        }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

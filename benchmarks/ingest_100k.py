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
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    "DVC_NO_ANALYTICS": "1",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run `cmd`; return (seconds, peak summed RSS of its process tree in MiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return time.perf_counter() - start, peak / 2**20


def make_repo(where: Path, images: int, workers: int, shard_size: int) -> Path:
    repo = where / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data" / "raw", repo / "data" / "raw")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(image_size=32, num_workers=workers, shard_size=shard_size)
    params["data"]["synthetic"]["num_images"] = images
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "bench"],
    ):
        subprocess.run(cmd, cwd=repo, env=ENV, check=True, capture_output=True)
    return repo


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=10_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="recap-bench-") as tmp:
        repo = make_repo(Path(tmp), args.images, args.workers, args.shard_size)
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

"""Benchmark recaptioning: batched KV-cached decoding against one generate() per image,
and the training time of each captioner stage.

    .venv/bin/python benchmarks/captioner.py [--images 2000] [--single 100] [--train]

Needs the trained captioners and cached embeddings of this checkout (`make repro`).
1. Throughput: the recaption stage's batched decoding (`recaption.batch_size` images
   per generate() call, greedy, params' length limits) on `--images` images, against
   a loop calling generate() on one image at a time on `--single` images; same
   models, same process, short (stage 1) and descriptive (stage 2) captions, in
   fp32 and under bf16 autocast (`recaption.precision`).
2. With `--train`: the three captioner stages rerun on a copy of their inputs in a
   scratch folder (the project's outputs are not touched), wall time of each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from recaption import embed, paths
from recaption.models import captioner as captioner_lib
from recaption.models.captioner import Decoding
from recaption.params import load_params
from recaption.stages.recaption import KINDS, caption_batches

from common import ROOT, timed


def throughput(n_batched: int, n_single: int) -> dict:
    params = load_params(ROOT / paths.PARAMS)
    emb = embed.read_dir(ROOT / paths.IMAGE_EMBEDDINGS)
    features = torch.from_numpy(emb.features_of(emb.keys[:n_batched]))
    out = {}
    for kind, stage in KINDS.items():
        model = captioner_lib.load(ROOT / paths.CAPTIONER / stage).eval()
        decoding = Decoding(**getattr(params.recaption, kind).model_dump())
        out[kind] = {}
        for precision in ("fp32", "bf16"):
            start = time.perf_counter()
            batched = caption_batches(
                model, features, decoding, params.recaption.batch_size, 0, precision
            )
            batched_rate = len(batched) / (time.perf_counter() - start)
            start = time.perf_counter()
            single = caption_batches(model, features[:n_single], decoding, 1, 0, precision)
            single_rate = n_single / (time.perf_counter() - start)
            out[kind][precision] = {
                "batched_captions_per_s": round(batched_rate, 1),
                "single_captions_per_s": round(single_rate, 2),
                "speedup": round(batched_rate / single_rate, 1),
                "same_captions": single == batched[:n_single],
                "mean_words": round(sum(len(c.split()) for c in batched) / len(batched), 1),
            }
    return out


def training_times() -> dict:
    """Wall time of each captioner stage, rerun in a scratch copy of its inputs."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for rel in ("params.yaml", "configs", "data/dataset", "data/subset", "data/annotations",
                    "data/embeddings/images"):  # fmt: skip
            src, dst = ROOT / rel, work / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
        times = {}
        for stage in ("pretrain", "stage1", "stage2"):
            seconds, peak = timed(["recap", f"captioner-{stage}"], work)
            lineage = json.loads((work / paths.CAPTIONER / stage / "lineage.json").read_text())
            times[stage] = {
                "seconds": round(seconds, 1),
                "peak_rss_mib": round(peak),
                "steps": lineage["metrics"]["steps"],
                "kept_step": lineage["metrics"]["kept_step"],
            }
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--single", type=int, default=100)
    parser.add_argument("--train", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {"threads": torch.get_num_threads(), "decoding": throughput(args.images, args.single)}
    if args.train:
        result["training"] = training_times()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

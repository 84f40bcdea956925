"""Benchmark upsampling: batched, left-padded rewriting against one generate() per text.

    .venv/bin/python benchmarks/upsample.py [--texts 2000] [--single 50]

Needs the trained upsampler of this checkout (`make repro`). Rewrites the ground-truth
captions of the first `--texts` dataset images the way `upsample_captions` does
(`upsample.generate_batch_size` per generate() call, the saved decoding), then
`--single` of them one at a time, in the same process; prints texts/s for both and
the time `upsample_captions` would take on the whole dataset.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from recaption import datasets, paths
from recaption.models import upsampler as up_lib
from recaption.params import load_params

from common import ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--single", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    params = load_params(ROOT / paths.PARAMS)
    model = up_lib.load(ROOT / paths.UPSAMPLER)
    rows = datasets.load_rows(ROOT / paths.DATASET, ["caption"])
    texts = [r["caption"] for r in rows[: args.texts]]
    batch = params.upsample.generate_batch_size

    start = time.perf_counter()
    rewrites = model.rewrite(texts, None, batch, params.seed)
    batched = len(texts) / (time.perf_counter() - start)
    start = time.perf_counter()
    singles = [model.rewrite([t], None, 1, params.seed)[0] for t in texts[: args.single]]
    single = args.single / (time.perf_counter() - start)
    result = {
        "texts": len(texts),
        "batch_size": batch,
        "batched_texts_per_s": round(batched, 1),
        "single_texts_per_s": round(single, 1),
        "speedup": round(batched / single, 1),
        "same_rewrites": sum(a == b for a, b in zip(rewrites, singles, strict=False)),
        "compared": len(singles),
        "mean_words_in": round(sum(len(t.split()) for t in texts) / len(texts), 1),
        "mean_words_out": round(sum(len(r.split()) for r in rewrites) / len(rewrites), 1),
        "dataset_images": len(rows),
        "upsample_captions_estimate_s": round(len(rows) / batched),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

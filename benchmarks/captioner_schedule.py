"""What the descriptive tuning's captions say as it trains: caption facts against steps.

captioner_stage2 keeps the weights with the lowest validation loss (50 held-back
annotated pairs, teacher-forced). This benchmark asks whether that loss picks the
weights that write the truest captions: it tunes stage 2 from the project's stage-1
captioner exactly as the stage does (same pairs, split, loop and seed), but at every
evaluation it also decodes the held-out images (greedy, `recaption.descriptive`'s
decoding) and scores their facts against the world's scenes, and it makes no
early stop, so the whole curve is seen.

    .venv/bin/python benchmarks/captioner_schedule.py PROJECT [--set stage2.steps=1200 ...]

PROJECT is a project folder after `make repro` (its params.yaml, data/ and models/;
nothing in it is written). `--set` overrides `captioner.stage2` keys. Prints one row
per evaluation: step, validation loss, descriptive precision / recall, CHAIR_s,
objects and positions.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from recaption import datasets, embed, paths, precision
from recaption.metrics import captions as cm
from recaption.models import captioner_train, captioners
from recaption.models.captioner import Decoding
from recaption.params import parse_params
from recaption.stages import captioner as stage_lib
from recaption.stages.recaption import caption_batches


def heldout_scenes(limit: int) -> tuple[list[str], list]:
    heldout = sorted(datasets.read_splits(paths.SPLITS)["heldout"])[:limit]
    rows = datasets.load_rows(paths.DATASET, ["meta"], set(heldout))
    return [r["key"] for r in rows], [cm.scene_from_meta(r["meta"]) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("project", type=Path)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a captioner.stage2 key, e.g. steps=1200")  # fmt: skip
    ap.add_argument("--heldout", type=int, default=500)
    args = ap.parse_args()
    os.chdir(args.project)
    raw = yaml.safe_load(Path("params.yaml").read_text())
    for item in args.set:
        key, value = item.split("=", 1)
        raw["captioner"]["stage2"][key.removeprefix("stage2.")] = yaml.safe_load(value)
    params = parse_params(raw)
    sp = params.captioner.stage2

    # The stage's own data: its pairs, its validation split, the stage-1 weights.
    emb = embed.read_dir(paths.IMAGE_EMBEDDINGS)
    pairs = stage_lib.stage_pairs("stage2")
    train_pairs, val_pairs = stage_lib.split_pairs("stage2", pairs, params)
    train = stage_lib.features_and_captions(emb, train_pairs)
    val = stage_lib.features_and_captions(emb, val_pairs)
    model = captioners.load(stage_lib.folder("stage1"))
    compute, _ = precision.settle(sp.precision, "cpu", "captioner.stage2.precision")
    # No early stop whatever the params keep: the benchmark wants the whole curve.
    config = replace(stage_lib.train_config(sp, len(train[1]), params.seed, compute), keep="last")

    test_keys, scenes = heldout_scenes(args.heldout)
    test_features = torch.from_numpy(emb.features_of(test_keys))
    decoding = Decoding(**params.recaption.descriptive.model_dump())
    rows: list[dict] = []

    def score(step: int, metrics: dict) -> None:  # after each validation, at its weights
        if "val_loss" not in metrics:
            return
        model.eval()
        with torch.inference_mode():
            batch = params.recaption.batch_size
            texts = caption_batches(model, test_features, decoding, batch, params.seed, compute)
        s = cm.attribute_scores(texts, scenes)
        rows.append({"step": step, "val_loss": metrics["val_loss"], "precision": s["precision"],
                     "recall": s["recall"], "chair_s": s["hallucination_captions"],
                     "object": s["by_kind"]["object"]["precision"],
                     "position": s["by_kind"]["position"]["precision"]})  # fmt: skip
        print(rows[-1], flush=True)

    start = time.perf_counter()
    captioner_train.train_captioner(model, train, val, config, log_step=score)
    print(f"{config.steps} steps, {len(train[1])} pairs, {time.perf_counter() - start:.0f} s "
          f"({compute}, {torch.backends.cpu.get_cpu_capability()})")  # fmt: skip
    print("| step | val loss | precision | recall | CHAIR_s | objects | positions |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['step']} | {r['val_loss']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{r['chair_s']:.3f} | {r['object']:.3f} | {r['position']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()

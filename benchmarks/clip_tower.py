"""CLIP image towers measured by what their embeddings carry: which tower lets the
captioner see shape, colour, position and background.

Trains one CLIP architecture exactly as the clip_pretrain stage does (the dataset's
image-caption pairs, held-out split excluded), then embeds the probe images as the
embed stage does (pooled vector + grid cells) and reports the embed_probe's linear
probes on the held-out split, with and without the grid, and the training time.
Run from a checkout whose data/ holds the default run's dataset, splits and
annotations (`dvc repro annotate`).

    .venv/bin/python benchmarks/clip_tower.py configs/clip/tiny-rn-32.json [--caption-loss 1]
    .venv/bin/python benchmarks/clip_tower.py configs/clip/tiny-rn-32.json --corpus 40000 \
        --twins 0.5
    .venv/bin/python benchmarks/clip_tower.py configs/clip/tiny-cnn-32.json --corpus 40000 \
        --scene-loss 10 [--scene-glyphs 0.333]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recaption import datasets, paths, precision, sampling
from recaption.metrics import probe
from recaption.models import clip as clip_lib
from recaption.models.clip_train import ClipTrainConfig, SceneLoss, train_clip
from recaption.params import load_params
from recaption.stages.clip_pretrain import (
    caption_loss,
    corpus_pairs,
    heldout_set,
    scene_loss,
    training_images,
    training_pairs,
)
from recaption.synthetic import world_config
from recaption.world.negatives import swap_word

from common import GLYPHS


class _Heads(nn.Module):
    """The scene loss's head, and beside it one reading the glyph's identity."""

    def __init__(self, scene: nn.Linear, glyph: nn.Linear):
        super().__init__()
        self.scene, self.glyph = scene, glyph

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scene(features)


class GlyphSceneLoss(SceneLoss):
    """The scene loss with one more term: which letter or digit the render's glyph is
    (cross-entropy over the 36, on the renders that have one), from the same features,
    so the cached features are asked for text as well as for each cell's content."""

    glyphs: torch.Tensor  # (N,) glyph index, -100 where there is none or no scene
    ratio: float  # the glyph term's weight against the other terms' mean

    @classmethod
    def wrap(cls, base: SceneLoss, scenes: list, feature_dim: int, seed: int,
             ratio: float) -> GlyphSceneLoss:  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            glyph = nn.Linear(feature_dim, len(GLYPHS))
        out = cls(_Heads(base.head, glyph), base.weight, base.grid, base.targets)
        out.glyphs = torch.tensor([GLYPHS.index(s.text.glyph) if s is not None and s.text
                                   else -100 for s in scenes])  # fmt: skip
        out.ratio = ratio
        return out

    def loss(self, features: torch.Tensor, rows) -> torch.Tensor:
        base = super().loss(features, rows)
        target = self.glyphs[list(rows)].to(features.device)
        if not (target >= 0).any():
            return base
        glyph = F.cross_entropy(self.head.glyph(features.float()), target, ignore_index=-100)
        # On the base terms' scale: ratio 1/3 makes it a fourth term of their mean.
        return (base + self.ratio * glyph) / (1 + self.ratio)


def probe_rows(params, size: int) -> tuple[list[str], list[str], dict[str, bytes], dict]:
    """(train keys, test keys, key -> image, key -> labels), as embed_probe draws them."""
    heldout = datasets.read_splits(paths.SPLITS)["heldout"]
    keys = [r["key"] for r in datasets.load_rows(paths.DATASET, ["key"])]
    rest = [k for k in keys if k not in heldout]
    train = sorted(sampling.pick(rest, min(params.embed.probe_train_size, len(rest)),
                                 params.seed, "probe"))  # fmt: skip
    test = sorted(heldout)
    rows = datasets.load_rows(paths.DATASET, ["image", "meta"], set(train) | heldout)
    images = {r["key"]: r["image"] for r in rows}
    labels = {r["key"]: probe.scene_labels(r["meta"]) for r in rows}
    return train, test, images, labels


@torch.inference_mode()
def features(clip, pngs: list[bytes], grid: int) -> np.ndarray:
    images = datasets.images_tensor(pngs, clip.image_size)
    out = [clip_lib.features(clip, clip.normalise(images[i : i + 512]), grid)
           for i in range(0, len(images), 512)]  # fmt: skip
    return torch.cat(out).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="open_clip architecture JSON")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--grid", type=int)
    ap.add_argument("--precision", choices=["fp32", "bf16"])
    ap.add_argument(
        "--hard-negatives",
        action="store_true",
        help="contrast each caption with a copy whose shape or colour word is swapped",
    )
    ap.add_argument(
        "--corpus",
        type=int,
        default=0,
        help="fresh world renders added to the pairs, each with its alt-text, "
        "short and descriptive caption (a pretraining corpus)",
    )
    ap.add_argument("--corpus-seed", type=int, default=424242)
    ap.add_argument(
        "--twins",
        type=float,
        default=0.0,
        help="share of the corpus renders that also get a twin (the same scene with one "
        "shape changed), drawn into the same batch (needs --corpus)",
    )
    ap.add_argument(
        "--caption-loss",
        type=float,
        default=0.0,
        help="weight of a captioning loss beside the contrastive one (CoCa / CapPa): a "
        "decoder writes each image's longest caption from its embedding and grid cells",
    )
    ap.add_argument(
        "--caption-lm",
        help="the captioning loss's decoder, a GPT-2 JSON (default: clip.train.caption_decoder)",
    )
    ap.add_argument(
        "--scene-loss",
        type=float,
        default=0.0,
        help="weight of a supervised loss on the corpus renders' scenes (each grid cell's "
        "content and colour, the background), read linearly from the features (needs --corpus)",
    )
    ap.add_argument(
        "--scene-glyphs",
        type=float,
        default=0.0,
        metavar="RATIO",
        help="the scene loss also reads which letter or digit a render's glyph is, at this "
        "weight against its other terms' mean (1/3: a fourth term of the mean; 0: off)",
    )
    ap.add_argument("--out", help="append the result row (JSON) to this file")
    args = ap.parse_args()
    params = load_params(paths.PARAMS)
    overrides = {k: getattr(args, k) for k in ("steps", "batch_size", "lr") if getattr(args, k)}
    train_cfg = params.clip.train.model_copy(update=overrides)
    compute, _ = precision.settle(args.precision or train_cfg.precision, torch.device("cpu"),
                                  "precision")  # fmt: skip
    grid = params.embed.grid if args.grid is None else args.grid
    clip = clip_lib.create(args.model, None, seed=params.seed)
    n_params = sum(p.numel() for p in clip.model.visual.parameters())
    if (args.twins or args.scene_loss) and not args.corpus:
        ap.error("--twins and --scene-loss need corpus renders: give --corpus too")
    keys, captions = training_pairs(params)
    extra, twins, scenes = None, [], [None] * len(keys)
    if args.corpus:
        extra, extra_captions, extra_twins, extra_scenes = corpus_pairs(
            world_config(params), args.corpus, args.corpus_seed, clip.image_size, args.twins
        )
        twins = [(len(keys) + o, len(keys) + t) for o, t in extra_twins]
        captions, scenes = [*captions, *extra_captions], [*scenes, *extra_scenes]
    held = params.model_copy(
        update={
            "data": params.data.model_copy(
                update={"stream": params.data.stream.model_copy(update={"mode": "never"})}
            )
        }
    )
    images = training_images(held, keys, extra, clip.image_size, Path(), bool(twins))
    config = ClipTrainConfig.of(train_cfg, seed=params.seed, precision=compute)
    start = time.perf_counter()
    negative = swap_word if args.hard_negatives else None
    train = params.clip.train.model_copy(
        update={
            "caption_loss": args.caption_loss,
            "caption_decoder": args.caption_lm or params.clip.train.caption_decoder,
            "scene_loss": args.scene_loss,
        }
    )
    clip_params = params.clip.model_copy(update={"train": train})
    embed_params = params.embed.model_copy(update={"grid": grid})
    params = params.model_copy(update={"clip": clip_params, "embed": embed_params})
    captioning = caption_loss(params, clip, captions)
    scene = scene_loss(params, clip, scenes)
    if args.scene_glyphs:
        if scene is None:
            ap.error("--scene-glyphs needs --scene-loss and --corpus")
        dim = scene.head.in_features
        scene = GlyphSceneLoss.wrap(scene, scenes, dim, params.seed, args.scene_glyphs)
    metrics = train_clip(clip, images, captions, config, heldout_set(clip.image_size),
                         negative=negative, captioning=captioning, twins=twins,
                         scene=scene)  # fmt: skip
    train_s = time.perf_counter() - start
    train, test, pngs_by_key, labels = probe_rows(params, params.embed.probe_train_size)
    start = time.perf_counter()
    feats = features(clip, [pngs_by_key[k] for k in train + test], grid)
    embed_s = time.perf_counter() - start
    dim = clip.model_cfg["embed_dim"]
    tr, te = feats[: len(train)], feats[len(train) :]
    row = {
        "model": Path(args.model).stem,
        "vision_params": n_params,
        "steps": config.steps,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "precision": compute,
        "hard_negatives": args.hard_negatives,
        "corpus": args.corpus,
        "twins": len(twins),
        "caption_loss": args.caption_loss,
        "scene_loss": args.scene_loss,
        "scene_glyphs": args.scene_glyphs,
        "corpus_seed": args.corpus_seed,
        "caption_lm": Path(params.clip.train.caption_decoder).stem if args.caption_loss else None,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "train_s": round(train_s, 1),
        "embed_img_per_s": round(len(feats) / embed_s, 1),
        "recall": {k: round(v, 3) for k, v in metrics.items() if "recall" in k},
    }
    train_labels, test_labels = [labels[k] for k in train], [labels[k] for k in test]
    for name, (a, b) in {"probe": (tr, te), "pooled": (tr[:, :dim], te[:, :dim])}.items():
        row[name], _ = probe.probe_scores(a, train_labels, b, test_labels)
    print(json.dumps(row))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

"""Generator designs measured on a perfect captioner: what learns the world in the budget.

    .venv/bin/python benchmarks/generator_design.py VARIANT [--steps N] [--prompts 300]

Trains one design on 7,500 world renders (the default dataset's seed and size), each
captioned as the reference-95 rung is (the world's reference descriptive caption with
probability 0.95, its alt-text otherwise), then draws one image per suite prompt
(descriptive and short phrasing, fixed seeds, 20 DDIM steps, guidance 3) and scores
them with the evaluation's oracle (models/eval/oracle: run `dvc repro oracle` first):
fact accuracy and GenEval, as `evaluate` does. Latent designs first train the built-in
autoencoder (configs/autoencoder/) and report the oracle's scene accuracy on its
reconstructions of fresh renders. Prints one JSON line; the table is in
reports/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from recaption import paths
from recaption.metrics import facts, geneval, noise_guard
from recaption.models import autoencoder as ae_lib
from recaption.models import clip as clip_lib
from recaption.models import clip_text, training
from recaption.models import generator as gen_lib
from recaption.models import oracle as oracle_lib
from recaption.models.generator_train import (
    Denoiser,
    GeneratorTrainConfig,
    _trainable,
    train_generator,
)
from recaption.models.tokenizer import train_tokenizer
from recaption.params import load_params
from recaption.synthetic import world_config
from recaption.world import make_example, prompt_suite

from common import ROOT

# name -> generator architecture JSON (relative to configs/generator/ or /tmp), the
# autoencoder JSON (None: pixel space), and training overrides.
VARIANTS: dict[str, dict] = {
    "pixel": {"model": "tiny-unet-32.json", "vae": None},
    "latent": {"model": "tiny-unet-latent-8.json", "vae": "tiny-kl-f4.json"},
    "latent-small-v": {  # the pixel design's UNet on 16x16 latents
        "model": "tiny-unet-32.json",
        "vae": "tiny-kl-f2.json",
        "prediction": "v_prediction",
    },
    "latent-v": {
        "model": "tiny-unet-latent-8.json",
        "vae": "tiny-kl-f4.json",
        "prediction": "v_prediction",
    },
    "latent-attn-v": {  # 16x16 latents, cross-attention at every level (16, 8, 4)
        "model": "tiny-unet-32.json",
        "vae": "tiny-kl-f2.json",
        "prediction": "v_prediction",
        "unet": {
            "down_block_types": ["CrossAttnDownBlock2D"] * 3,
            "up_block_types": ["CrossAttnUpBlock2D"] * 3,
        },
    },
    "latent-attn8-v": {  # 16x16 latents, cross-attention at 8x8 and 4x4
        "model": "tiny-unet-32.json",
        "vae": "tiny-kl-f2.json",
        "prediction": "v_prediction",
        "unet": {
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        },
    },
    "pixel-attn16": {
        "model": "tiny-unet-32.json",
        "vae": None,
        "unet": {
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        },
    },
    "patch4": {"model": "tiny-unet-latent-8.json", "vae": None, "patch": 4},
    "patch2": {"model": "tiny-unet-latent-8.json", "vae": None, "patch": 2},
    "pixel-coords": {"model": "tiny-unet-32.json", "vae": None, "coords": True},
    "patch2-small": {"model": "tiny-unet-32.json", "vae": None, "patch": 2},
    "patch2-v": {
        "model": "tiny-unet-32.json",
        "vae": None,
        "patch": 2,
        "prediction": "v_prediction",
    },
    "pixel-v": {"model": "tiny-unet-32.json", "vae": None, "prediction": "v_prediction"},
    "patch2-coords": {"model": "tiny-unet-latent-8.json", "vae": None, "patch": 2, "coords": True},
    "pixel-coords-attn16": {
        "model": "tiny-unet-32.json",
        "vae": None,
        "coords": True,
        "unet": {
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        },
    },
}


def world(n: int, seed: int, cfg) -> tuple[torch.Tensor, list, list[str]]:
    """(uint8 images, scenes, reference-95 captions) of examples 0..n-1."""
    rng = np.random.default_rng(seed)
    images, scenes, captions = [], [], []
    for i in range(n):
        ex = make_example(seed, i, cfg)
        images.append(torch.from_numpy(np.asarray(ex.image)).permute(2, 0, 1))
        scenes.append(ex.scene)
        captions.append(ex.descriptive if rng.random() < 0.95 else ex.caption)
    return torch.stack(images), scenes, captions


def train_vae(config: Path, images: torch.Tensor, steps: int, seed: int, lr: float, precision: str,
              edge_weight: float = 0.0, batch_size: int = 64):  # fmt: skip
    vae = ae_lib.create_builtin(config, images.shape[-1], seed)
    cfg = ae_lib.AutoencoderTrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=50,
                                        weight_decay=0.0, kl_weight=1e-4, grad_clip=1.0,
                                        precision=precision, seed=seed,
                                        edge_weight=edge_weight)  # fmt: skip
    start = time.perf_counter()
    metrics = ae_lib.train_autoencoder(vae, images, cfg)
    return vae, {**metrics, "seconds": round(time.perf_counter() - start, 1)}


def draw_and_read(pipe, oracle, prompts: list[str], steps: int, guidance: float) -> tuple:
    """(images drawn for `prompts` with seeds 0.., the oracle's reading of them), drawn in
    batches of 100."""
    images = []
    for i in range(0, len(prompts), 100):
        batch = prompts[i : i + 100]
        images += pipe(batch, steps, guidance, seed=list(range(i, i + len(batch))))
    pixels = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)
    return images, oracle_lib.predict(oracle, pixels.contiguous())


def score(pipe, oracle, suite, phrasing: str, steps: int, guidance: float) -> dict:
    prompts = [p.descriptive if phrasing == "descriptive" else p.prompt for p in suite]
    images, pred = draw_and_read(pipe, oracle, prompts, steps, guidance)
    found = oracle_lib.detections(pred)
    fact = [facts.fact_accuracy(d, p.demands) for d, p in zip(found, suite, strict=True)]
    follow = [geneval.follows(d, p.demands, p.category) for d, p in zip(found, suite, strict=True)]
    by_cat: dict[str, list[float]] = {}
    for p, f in zip(suite, fact, strict=True):
        by_cat.setdefault(p.category, []).append(f)
    drawn = np.stack([np.asarray(im) for im in images])
    return {
        "roughness": round(float(np.median(noise_guard.roughness(drawn))), 2),
        "fact": round(float(np.mean(fact)), 3),
        "geneval": round(float(np.mean(follow)), 3),
        "fact_by_category": {c: round(float(np.mean(v)), 3) for c, v in by_cat.items()},
        "images": images,
    }


def train_captions(pipe, oracle, scenes: list, captions: list[str], n: int, steps: int,
                   guidance: float) -> dict:  # fmt: skip
    """Draw the first `n` training captions and read the drawings against their own scenes:
    a model that cannot redraw what it trained on underfits (more data will not help), and
    one that redraws them but not the suite's prompts has not generalised."""
    _, pred = draw_and_read(pipe, oracle, captions[:n], steps, guidance)
    found = oracle_lib.detections(pred)
    fact = [facts.fact_accuracy(d, facts.caption_demands(c, s))
            for d, c, s in zip(found, captions[:n], scenes[:n], strict=True)]  # fmt: skip
    read = oracle_lib.accuracy(pred, oracle_lib.stack_targets(scenes[:n]))
    return {"fact": round(float(np.mean([f for f in fact if f is not None])), 3),
            **{k: round(v, 3) for k, v in read.items()}}  # fmt: skip


_EMA = training.EMA


class ShadowedEMA(_EMA):
    """The training loop's EMA, which also keeps one more average per decay in `decays`
    (decay 0: the live weights), so one training scores several EMA decays. `made` holds
    the instances the loop created."""

    decays: tuple[float, ...] = ()
    made: list[ShadowedEMA] = []

    def __init__(self, named: dict, decay: float):
        super().__init__(named, decay)
        self.others = {d: _EMA(named, d) for d in self.decays}
        ShadowedEMA.made.append(self)

    def update(self, named: dict, step: int) -> None:
        super().update(named, step)
        for other in self.others.values():
            other.update(named, step)


def caption_gain(pipe, images: torch.Tensor, captions: list[str], n: int = 256) -> dict:
    """The share of the denoising loss the caption removes, at fixed noise on the last `n`
    training images, at t = 200, 500, 800: how much the model listens to the text."""
    x = images[-n:].float() / 127.5 - 1
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    denoiser, gains = Denoiser(pipe), {}
    with torch.no_grad():
        for step in (200, 500, 800):
            t = torch.full((len(x),), step)
            with_caption = denoiser(x, t, noise, captions[-n:]).item()
            without = denoiser(x, t, noise, [""] * len(x)).item()
            gains[step] = round((without - with_caption) / without, 4)
    return gains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant")
    parser.add_argument("--model", help="generator JSON, overriding the variant's")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--vae-model", help="autoencoder JSON, overriding the variant's")
    parser.add_argument("--vae-edge-weight", type=float, default=0.0)
    parser.add_argument("--vae-load", help="a saved autoencoder, instead of training one")
    parser.add_argument("--vae-batch-size", type=int, default=64)
    parser.add_argument("--vae-save", help="save the trained autoencoder here")
    parser.add_argument("--vae-only", action="store_true", help="stop after the autoencoder")
    parser.add_argument("--images", type=int, default=7500)
    parser.add_argument("--prompts", type=int, default=50, help="per category")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument(
        "--freeze-text-encoder",
        action="store_true",
        help="keep the text encoder at its random initialisation",
    )
    parser.add_argument("--clip-text", help="a trained CLIP folder (models/clip): its text "
                        "tower, frozen, as the text encoder")  # fmt: skip
    parser.add_argument("--clip-text-tune", action="store_true",
                        help="with --clip-text: train the tower with the UNet")  # fmt: skip
    parser.add_argument("--warmup", type=int, help="warm-up steps (default: the params')")
    parser.add_argument(
        "--caption-gain",
        action="store_true",
        help="measure the caption's share of the denoising, not the suite",
    )
    parser.add_argument("--train-captions", type=int, default=0, metavar="N",
                        help="also draw the first N training captions and read them against "
                        "their own scenes (does it redraw what it trained on?)")  # fmt: skip
    parser.add_argument("--snr-gamma", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0, help="added to the generator's seed")
    parser.add_argument("--edge-weight", type=float, default=0.0,
                        help="denoising-loss weight near outlines")  # fmt: skip
    parser.add_argument("--save", help="save the trained pipeline here")
    parser.add_argument("--load", help="score a saved pipeline instead of training one")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--grid", help="write a sample grid (descriptive prompts) here")
    parser.add_argument("--ema-decays", default="",
                        help="comma-separated EMA decays also kept and scored beside "
                             "generator.ema_decay (0: the live weights)")  # fmt: skip
    args = parser.parse_args()
    variant = VARIANTS[args.variant]
    params = load_params(ROOT / paths.PARAMS)
    cfg = world_config(params)
    images, scenes, captions = world(args.images, params.seed, cfg)
    hwc = images.permute(0, 2, 3, 1).numpy()
    out_rough = round(float(np.median(noise_guard.roughness(hwc))), 2)
    oracle = oracle_lib.load(ROOT / paths.ORACLE)
    out: dict = {"variant": args.variant, "steps": args.steps, "batch_size": args.batch_size,
                 "seed": args.seed, "snr_gamma": args.snr_gamma,
                 "edge_weight": args.edge_weight, "model": args.model,
                 "precision": args.precision, "frozen_text_encoder": args.freeze_text_encoder,
                 "clip_text": args.clip_text, "clip_text_tune": args.clip_text_tune,
                 "lr": args.lr, "capability": torch.backends.cpu.get_cpu_capability(),
                 "threads": torch.get_num_threads(), "dataset_roughness": out_rough}  # fmt: skip
    vae, data = None, images
    if variant["vae"]:
        vae_model = args.vae_model or ROOT / "configs/autoencoder" / variant["vae"]
        if args.vae_load:
            vae, out["vae"] = ae_lib.load(args.vae_load), {"loaded": args.vae_load}
        else:
            vae, out["vae"] = train_vae(
                Path(vae_model), images, args.vae_steps, params.seed, args.vae_lr,
                args.precision, args.vae_edge_weight, args.vae_batch_size,
            )  # fmt: skip
            out["vae"]["edge_weight"] = args.vae_edge_weight
        if args.vae_save:
            vae.save_pretrained(args.vae_save)
        fresh = [make_example(params.evaluate.seed, i, cfg) for i in range(1000)]
        arrays = [torch.from_numpy(np.asarray(e.image)).permute(2, 0, 1) for e in fresh]
        pixels = torch.stack(arrays)
        recon = ae_lib.reconstruct(vae, pixels)
        target = oracle_lib.stack_targets([e.scene for e in fresh])
        out["vae"]["oracle_on_recon"] = {
            k: round(v, 4)
            for k, v in oracle_lib.accuracy(oracle_lib.predict(oracle, recon), target).items()
        }
        if args.vae_only:
            print(json.dumps(out))
            return
        data = ae_lib.encode(vae, images) * vae.config.scaling_factor
    model = Path(args.model) if args.model else ROOT / "configs/generator" / variant["model"]
    if not args.model:  # the variant's edit of its JSON; the noise target unless it says
        spec = json.loads(model.read_text())
        spec["scheduler"]["prediction_type"] = variant.get("prediction", "epsilon")
        spec["unet"].update(variant.get("unet", {}))
        spec.update({"patch_size": variant["patch"]} if variant.get("patch") else {})
        spec.update({"coord_channels": True} if variant.get("coords") else {})
        model = Path(tempfile.mkdtemp()) / f"{args.variant}.json"
        model.write_text(json.dumps(spec))
    seed = params.seed + args.seed  # the generator's own draws; the data stay the dataset's
    if args.clip_text:
        clip = clip_lib.load(args.clip_text)
        text_encoder = clip_text.text_encoder(clip)
        tokenizer = clip_text.tokenizer(text_encoder.config.max_position_embeddings)
    else:
        text_encoder = None
        tokenizer = train_tokenizer(captions, params.generator.vocab_size, wrap=True)
    pipe = gen_lib.create_builtin(model, tokenizer, images.shape[-1], seed, vae, text_encoder)
    gp = params.generator
    config = GeneratorTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                  warmup_steps=args.warmup or gp.warmup_steps,
                                  weight_decay=gp.weight_decay,
                                  grad_clip=gp.grad_clip, cond_dropout=gp.cond_dropout,
                                  ema_decay=gp.ema_decay, checkpoint_every=0,
                                  train_text_encoder=not (args.freeze_text_encoder
                                                          or args.clip_text)
                                  or args.clip_text_tune,
                                  precision=args.precision,
                                  seed=seed, snr_gamma=args.snr_gamma,
                                  edge_weight=args.edge_weight)  # fmt: skip
    start = time.perf_counter()
    ShadowedEMA.decays = tuple(float(d) for d in args.ema_decays.split(",") if d)
    if ShadowedEMA.decays:
        training.EMA = ShadowedEMA  # the loop builds its EMA by this name
    if args.load:
        pipe = gen_lib.load(args.load)
    else:
        metrics = train_generator(
            pipe,
            data,
            lambda epoch: captions,
            config,
            edges=ae_lib.pooled_edges(images, pipe.unet.config.sample_size),
        )
        out["train_seconds"] = round(time.perf_counter() - start, 1)
        out["loss"] = round(metrics["loss"], 4)
    if args.save:
        pipe.save_pretrained(args.save)
    out["unet_params"] = sum(p.numel() for p in pipe.unet.parameters())
    if args.caption_gain:
        print(json.dumps({**out, "caption_gain": caption_gain(pipe, images, captions)}))
        return
    pipe.set_progress_bar_config(disable=True)
    if args.train_captions:
        out["train_captions"] = train_captions(pipe, oracle, scenes, captions,
                                               min(args.train_captions, len(captions)),
                                               args.sample_steps, args.guidance)  # fmt: skip
    suite = prompt_suite(params.prompts.seed, args.prompts)
    start = time.perf_counter()
    for phrasing in ("descriptive", "short"):
        result = score(pipe, oracle, suite, phrasing, args.sample_steps, args.guidance)
        images_drawn = result.pop("images")
        out[phrasing] = result
        if args.grid and phrasing == "descriptive":
            gen_lib.image_grid(images_drawn[:: max(1, len(images_drawn) // 48)][:48], 8).resize(
                (8 * 34 * 3, 6 * 34 * 3), 0
            ).save(args.grid)
    out["sample_seconds"] = round(time.perf_counter() - start, 1)
    if ShadowedEMA.made:  # the other averages, scored the same way
        named = _trainable(pipe, config)
        out["ema"] = {}
        for decay, ema in ShadowedEMA.made[-1].others.items():
            ema.copy_to(named)
            out["ema"][decay] = {
                phrasing: {k: v for k, v in score(pipe, oracle, suite, phrasing,
                                                  args.sample_steps, args.guidance).items()
                           if k != "images"}
                for phrasing in ("descriptive", "short")
            }  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()

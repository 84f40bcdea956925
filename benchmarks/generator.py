"""Benchmark generator training: the training loop's images/s against a bare
forward/backward loop on the same model and batch, in the same run.

    .venv/bin/python benchmarks/generator.py [--images 2000] [--steps 60] [--size 32]
        [--precision fp32] [--compile] [--channels-last]

Both use the default architecture (`generator.model`; in the latent space of a fresh
`autoencoder.model` when the params name one, so the UNet sees latents of the shape
the pipeline caches), batch `generator.batch_size`, the params' edge weight, the
params' precision (resolved for this CPU) unless --precision says, random weights,
and random data in memory. "loop" is `train_generator` (per-epoch captions, seeded
batches, caption dropout, EMA, no checkpoints); "bare" repeats one preloaded batch
through the same denoising loss, backward and optimizer step, and nothing else.
--compile wraps the UNet in torch.compile (its compile time is reported apart);
--channels-last stores the UNet's weights channels-last: two kernel-level speed-ups
measured, not used by the stage (reports/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from recaption import paths, precision
from recaption.models import autoencoder as ae_lib
from recaption.models import generator as gen_lib
from recaption.models.generator_train import (
    GeneratorTrainConfig,
    denoising_loss,
    to_model_space,
    train_generator,
)
from recaption.models.tokenizer import train_tokenizer
from recaption.params import load_params
from recaption.world import COLOUR_NAMES, SHAPES

from common import ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    params = load_params(ROOT / paths.PARAMS)
    gp = params.generator
    captions = [f"a {c} {s} on a gray background with a small one at the top left"
                for c in COLOUR_NAMES for s in SHAPES]  # fmt: skip
    captions = [captions[i % len(captions)] for i in range(args.images)]
    tok = train_tokenizer(captions, gp.vocab_size, wrap=True)
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8)
    compute, _ = precision.settle(args.precision or gp.precision, "cpu", "generator.precision")
    config = GeneratorTrainConfig.of(gp, seed=0, steps=args.steps, checkpoint_every=0,
                                     warmup_steps=5, precision=compute)  # fmt: skip
    ae = params.autoencoder.model

    def fresh() -> tuple[gen_lib.GeneratorPipeline, torch.Tensor]:
        """A fresh pipeline, and the training data in its model space (random latents of
        the cached shape, or the pixels)."""
        vae = None if ae == "none" else ae_lib.create_builtin(ROOT / ae, args.size, 0)
        pipe = gen_lib.create_builtin(ROOT / gp.model, tok, args.size, 0, vae)
        if args.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
        if args.compile:
            pipe.unet = torch.compile(pipe.unet, dynamic=False)
        if vae is None:
            return pipe, images
        side = pipe.unet.config.sample_size
        shape = (args.images, vae.config.latent_channels, side, side)
        return pipe, torch.randn(shape, generator=torch.Generator().manual_seed(0))

    pipe, data = fresh()
    start = time.perf_counter()
    loop = train_generator(
        pipe,
        data,
        lambda epoch: captions,
        config,
        edges=ae_lib.pooled_edges(images, pipe.unet.config.sample_size),
    )
    loop_seconds = time.perf_counter() - start  # compile time included

    pipe, data = fresh()
    trained = [*pipe.unet.parameters(), *pipe.text_encoder.parameters()]
    opt = torch.optim.AdamW(trained, lr=gp.lr)
    x0 = to_model_space(pipe, data[: gp.batch_size])
    texts = captions[: gp.batch_size]
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        with precision.autocast(compute, "cpu"):
            loss = denoising_loss(pipe, x0, texts, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    start = time.perf_counter()
    step()  # compiles, with --compile
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    bare = args.steps * gp.batch_size / (time.perf_counter() - start)
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                      "threads": torch.get_num_threads(), "precision": compute,
                      "model": gp.model, "autoencoder": ae, "compile": args.compile,
                      "channels_last": args.channels_last,
                      "loop_images_per_s": round(loop["images_per_s"], 1),
                      "loop_seconds": round(loop_seconds, 1),
                      "bare_images_per_s": round(bare, 1),
                      "bare_first_step_seconds": round(first, 1),
                      "ratio": round(loop["images_per_s"] / bare, 3)},
                     indent=2))  # fmt: skip


if __name__ == "__main__":
    main()

"""Benchmark generator training: the training loop's images/s against a bare
forward/backward loop on the same model and batch, in the same run.

    .venv/bin/python benchmarks/generator.py [--images 2000] [--steps 60] [--size 32]

Both use the default architecture (`generator.model`), batch `generator.batch_size`,
the params' precision (resolved for this CPU), random weights, and synthetic images
in memory. "loop" is
`train_generator` (per-epoch captions, seeded batches, caption dropout, EMA,
no checkpoints); "bare" repeats one preloaded batch through the same denoising loss,
backward and optimizer step, and nothing else.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from recaption import paths, precision
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
    args = parser.parse_args()
    gp = load_params(ROOT / paths.PARAMS).generator
    captions = [f"a {c} {s} on a gray background with a small one at the top left"
                for c in COLOUR_NAMES for s in SHAPES]  # fmt: skip
    captions = [captions[i % len(captions)] for i in range(args.images)]
    tok = train_tokenizer(captions, gp.vocab_size, wrap=True)
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8)
    compute, _ = precision.settle(gp.precision, "cpu", "generator.precision")
    config = GeneratorTrainConfig.of(gp, seed=0, steps=args.steps, checkpoint_every=0,
                                     warmup_steps=5, precision=compute)  # fmt: skip

    pipe = gen_lib.create_builtin(ROOT / gp.model, tok, args.size, 0)
    loop = train_generator(pipe, images, lambda epoch: captions, config)["images_per_s"]

    pipe = gen_lib.create_builtin(ROOT / gp.model, tok, args.size, 0)
    params = [*pipe.unet.parameters(), *pipe.text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=gp.lr)
    x0 = to_model_space(pipe, images[: gp.batch_size])
    texts = captions[: gp.batch_size]
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(args.steps):
        with precision.autocast(compute, "cpu"):
            loss = denoising_loss(pipe, x0, texts, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    bare = args.steps * gp.batch_size / (time.perf_counter() - start)
    print(json.dumps({"threads": torch.get_num_threads(), "loop_images_per_s": round(loop, 1),
                      "bare_images_per_s": round(bare, 1), "ratio": round(loop / bare, 3)},
                     indent=2))  # fmt: skip


if __name__ == "__main__":
    main()

"""Benchmark every training stage's steps/s in fp32 and under bf16 autocast, on this CPU
and on this CPU restricted to AVX2 kernels (no native bf16), and what `auto` picks.

    .venv/bin/python benchmarks/precision.py [--steps 20] [--emulated-bf16-steps 4]

Each stage's own training function (`train_clip`, `train_captioner`,
`train_generator`, the upsampler's `train`) runs the default architecture, batch and
sequence lengths of params.yaml on random weights and world renders, once for one
step and once for `--steps` (`--emulated-bf16-steps` for bf16 on AVX2 kernels, where
a step takes many seconds); the difference gives the steady steps/s, without model
building or the first step's allocations. clip_pretrain and eval_clip share one loop.

"avx2" reruns the same measurement in a child process with ATEN_CPU_CAPABILITY=avx2,
ONEDNN_MAX_CPU_ISA=AVX2 and MKL_ENABLE_INSTRUCTIONS=AVX2: the kernels an AVX2-only
CPU (many AMD EPYC, most laptops) runs, where bf16 is emulated. The figures are
ratios measured in one run on one machine; another CPU gives other absolute rates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from recaption import paths, precision
from recaption.models import captioner as captioner_lib
from recaption.models import clip as clip_lib
from recaption.models import generator as gen_lib
from recaption.models import upsampler as up_lib
from recaption.models.captioner_train import CaptionTrainConfig, train_captioner
from recaption.models.clip_train import ClipTrainConfig, train_clip
from recaption.models.generator_train import GeneratorTrainConfig, train_generator
from recaption.models.tokenizer import train_tokenizer
from recaption.params import Params, load_params
from recaption.synthetic import world_config
from recaption.world import make_example

from common import ROOT

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2"}  # fmt: skip
N_IMAGES = 512


def world(params: Params):
    """Renders of the default world: uint8 images (N, 3, S, S), descriptive and alt captions."""
    cfg = world_config(params)
    examples = [make_example(12345, i, cfg) for i in range(N_IMAGES)]
    images = torch.stack([torch.from_numpy(np.asarray(e.image)) for e in examples])
    return images.permute(0, 3, 1, 2).contiguous(), [e.descriptive for e in examples], \
        [e.caption for e in examples]  # fmt: skip


def clip_run(params: Params, data) -> Callable[[int, str], None]:
    images, descriptive, alt = data
    tp = params.clip.train

    def run(steps: int, compute: str) -> None:
        clip = clip_lib.create(str(ROOT / params.clip.model), None, seed=0)
        config = ClipTrainConfig.of(tp, seed=0, steps=steps, precision=compute)
        train_clip(clip, images, [[d, a] for d, a in zip(descriptive, alt, strict=True)], config)

    return run


def captioner_run(params: Params, data, stage: str) -> Callable[[int, str], None]:
    _, descriptive, alt = data
    cp = params.captioner
    sp = getattr(cp, stage)
    texts = alt if stage == "pretrain" else descriptive
    grid = params.embed.grid
    dims = (128, grid * grid, 128)  # the default CLIP's embedding width, per grid cell too
    features = torch.randn(N_IMAGES, dims[0] + dims[1] * dims[2])

    def run(steps: int, compute: str) -> None:
        model = captioner_lib.create(str(ROOT / cp.lm), texts, cp.vocab_size, dims,
                                     cp.prefix_length, cp.mapper_hidden, 0)  # fmt: skip
        config = CaptionTrainConfig.of(sp, steps=steps, precision=compute, eval_every=10**6,
                                       seed=0)  # fmt: skip
        val = (features[:8], texts[:8])
        train_captioner(model, (features, texts), val, config)

    return run


def generator_run(params: Params, data) -> Callable[[int, str], None]:
    images, descriptive, _ = data
    gp = params.generator
    tok = train_tokenizer(descriptive, gp.vocab_size, wrap=True)

    def run(steps: int, compute: str) -> None:
        pipe = gen_lib.create_builtin(ROOT / gp.model, tok, params.data.image_size, 0)
        config = GeneratorTrainConfig.of(gp, seed=0, steps=steps, precision=compute,
                                         checkpoint_every=0)  # fmt: skip
        train_generator(pipe, images, lambda epoch: descriptive, config)

    return run


def upsampler_run(params: Params, data) -> Callable[[int, str], None]:
    _, descriptive, alt = data
    us = params.upsample
    pairs = list(zip(alt, descriptive, strict=True))

    def run(steps: int, compute: str) -> None:
        model = up_lib.create(str(ROOT / us.lm), alt + descriptive, us.vocab_size, 0,
                              us.max_source_tokens)  # fmt: skip
        config = up_lib.UpsampleTrainConfig.of(us, seed=0, steps=steps, precision=compute)
        up_lib.train(model, pairs, config)

    return run


def steps_per_s(run: Callable[[int, str], None], steps: int, compute: str) -> float:
    timings = []
    for n in (1, steps):
        start = time.perf_counter()
        run(n, compute)
        timings.append(time.perf_counter() - start)
    return (steps - 1) / max(timings[1] - timings[0], 1e-9)


def measure(steps: int, bf16_steps: int) -> dict:
    """steps/s of each stage in fp32 and bf16 on the kernels this process dispatches to."""
    params = load_params(ROOT / paths.PARAMS)
    data = world(params)
    runs = {
        "clip_pretrain / eval_clip": clip_run(params, data),
        "captioner_pretrain": captioner_run(params, data, "pretrain"),
        "captioner_stage2": captioner_run(params, data, "stage2"),
        "train_generator": generator_run(params, data),
        "upsample": upsampler_run(params, data),
    }
    hw = precision.hardware("cpu")
    out = {"hardware": hw.record(), "auto": precision.resolve("auto", hw), "threads":
           torch.get_num_threads(), "stages": {}}  # fmt: skip
    for name, run in runs.items():
        rates = {
            c: round(steps_per_s(run, n, c), 3) for c, n in (("fp32", steps), ("bf16", bf16_steps))
        }
        out["stages"][name] = {**rates, "bf16_speedup": round(rates["bf16"] / rates["fp32"], 2)}
        print(name, out["stages"][name], file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--emulated-bf16-steps", type=int, default=4)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.steps, args.emulated_bf16_steps)))
        return
    native = measure(args.steps, args.steps)
    cmd = [sys.executable, __file__, "--child", "--steps", str(args.steps),
           "--emulated-bf16-steps", str(args.emulated_bf16_steps)]  # fmt: skip
    child = subprocess.run(cmd, env={**os.environ, **AVX2_ENV}, check=True,
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
    print(json.dumps({"native": native, "avx2": json.loads(child.stdout)}, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark train_generator on a dataset too large to hold: peak memory of the whole
process tree (main process and loader workers) while it streams the images.

    .venv/bin/python benchmarks/stream_train.py [--images 100000] [--size 256] [--steps 300]

In a scratch folder (kept between runs, `--dir`): `--images` JPEG photographs-like
images at `--size` px (a random 8x8 colour field, smoothly enlarged, plus grain;
quality 90, about what img2dataset writes) in shards of 2,000, all of them training
images with one caption each; then `recap train-generator` through the stage with
`data.stream.mode` (`--mode`, auto by default) on a small pixel-space UNet that works
in 8x8 patches (the data path is what is measured, not the UNet). Prints one JSON
line: the dataset's size on disk, what holding it as uint8 pixels would take, the run's
time and images/s, and the peak of its process tree's summed proportional set size
(`--memory rss`: resident sets, which count the pages forked loader workers share with
the main process twice).
"""

from __future__ import annotations

import argparse
import io as stdio
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import yaml
from PIL import Image

from recaption import io
from recaption.blend import SOURCES

from common import ROOT, timed

SHARD = 2000
UNET = {  # pixel space in 8x8 patches: a 256 px image is a 32x32 grid of 192 channels
    "patch_size": 8,
    "unet": {"layers_per_block": 1, "block_out_channels": [32, 64],
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
             "attention_head_dim": 8, "norm_num_groups": 8},
    "text_encoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 32},
    "scheduler": {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                  "prediction_type": "epsilon", "clip_sample": False},
}  # fmt: skip
WORDS = ["a", "red", "blue", "dog", "house", "tree", "on", "the", "beach", "at", "night"]


def photo(rng: np.random.Generator, size: int) -> bytes:
    """A JPEG of a smooth random colour field with grain."""
    field = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    pixels = np.asarray(field.resize((size, size), Image.BICUBIC), dtype=np.int16)
    pixels = pixels + rng.integers(-12, 13, pixels.shape, dtype=np.int16)
    out = stdio.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def write_inputs(project: Path, images: int, size: int) -> int:
    """The dataset shards, splits and relabeled captions train_generator reads; returns
    the dataset's bytes on disk. Reused when already written for these sizes."""
    marker = project / f"inputs-{images}-{size}.json"
    if marker.is_file():
        return json.loads(marker.read_text())["bytes"]
    shutil.rmtree(project / "data", ignore_errors=True)
    dataset = project / "data" / "dataset"
    dataset.mkdir(parents=True)
    keys, captions = [f"{i:08d}" for i in range(images)], []
    for shard, start in enumerate(range(0, images, SHARD)):
        rng = np.random.default_rng(shard)
        part = keys[start : start + SHARD]
        data = [photo(rng, size) for _ in part]
        table = pa.table({"key": part, "sha256": [io.sha256_bytes(d) for d in data],
                          "image": data})  # fmt: skip
        io.write_shard(dataset, shard, table)
        captions += [" ".join(rng.choice(WORDS, 6)) for _ in part]
        print(f"shard {shard}: {start + len(part)} images", flush=True)
    (project / "data" / "subset").mkdir(parents=True)
    io.write_table(project / "data" / "subset" / "splits.parquet", pa.table({
        "key": keys, "first": [False] * images, "second": [False] * images,
        "heldout": [False] * images,
    }))  # fmt: skip
    (project / "data" / "relabeled").mkdir(parents=True)
    columns = {"key": keys, "caption": captions, **{s: captions for s in SOURCES}}
    io.write_table(project / "data" / "relabeled" / "captions.parquet", pa.table(columns))
    size_on_disk = sum(p.stat().st_size for p in dataset.iterdir())
    marker.write_text(json.dumps({"bytes": size_on_disk}))
    return size_on_disk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--buffer", type=int, default=4096)
    parser.add_argument(
        "--memory",
        default="pss",
        choices=["pss", "rss"],
        help="the peak summed over the process tree (see common.timed)",
    )
    parser.add_argument("--mode", default="auto", choices=["auto", "always", "never"])
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "stream-bench"))
    args = parser.parse_args()
    project = Path(args.dir)
    project.mkdir(parents=True, exist_ok=True)
    on_disk = write_inputs(project, args.images, args.size)
    (project / "unet.json").write_text(json.dumps(UNET))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(image_size=args.size)
    params["data"]["stream"].update(mode=args.mode, buffer=args.buffer, workers=args.workers)
    params["generator"].update(model=str(project / "unet.json"), steps=args.steps,
                               batch_size=args.batch_size, checkpoint_every=0,
                               precision="fp32", device="cpu", edge_weight=0.0)  # fmt: skip
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(project / "models", ignore_errors=True)
    log: list[str] = []
    seconds, peak_mib = timed(["recap", "train-generator"], project, log, args.memory)
    print(json.dumps({
        "images": args.images, "size": args.size, "steps": args.steps,
        "batch_size": args.batch_size, "mode": args.mode, "workers": args.workers,
        "buffer": args.buffer,
        "dataset_mib": round(on_disk / 2**20), "held_as_pixels_mib":
            round(args.images * 3 * args.size**2 / 2**20),
        "streamed": "streaming" in log[0], "seconds": round(seconds, 1),
        "images_per_s": round(args.steps * args.batch_size / seconds, 1),
        f"peak_{args.memory}_mib": round(peak_mib),
        "capability": torch.backends.cpu.get_cpu_capability(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()

"""train_autoencoder and encode_latents: the latent space the built-in generator works in.

train_autoencoder trains `autoencoder.model` (an AutoencoderKL JSON) on every image
outside the held-out split (on the built-in world, with `autoencoder.corpus` fresh
renders beside them; held in memory, or streamed from shards past `data.stream.memory_gb`),
then checks that its reconstructions keep the scene: on
the synthetic world the evaluation's oracle reads the held-out reconstructions, and
the stage fails when fewer than `autoencoder.min_scene_accuracy` of them are read
exactly right. Outputs: models/autoencoder/ (save_pretrained, lineage.json),
reports/autoencoder.json and reports/autoencoder.png (held-out images above their
reconstructions). With `autoencoder.model: none` the generator works in pixel space
(or, a saved pipeline, in its own VAE's) and the folder holds only its lineage.

encode_latents brings data/latents/ up to date: see `recaption.latents`. Its VAE is the
trained autoencoder, or, with `autoencoder.model: none` and a saved pipeline folder as
`generator.model` (Stable Diffusion), that folder's frozen VAE; it encodes on
`autoencoder.device`, in float32 (the latents are stored as float32 either way).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from recaption import (
    datasets,
    devices,
    io,
    latent_space,
    latents,
    lineage,
    paths,
    precision,
    resume,
    streaming,
)
from recaption.corpus import fresh_renders
from recaption.errors import UserError
from recaption.live import main_live, step_logger, write_skipped
from recaption.models import autoencoder as ae_lib
from recaption.models import oracle as oracle_lib
from recaption.parallel import Parallel
from recaption.params import Params, load_params
from recaption.streaming import ImageStream, Stream
from recaption.synthetic import world_config
from recaption.world import Scene

log = logging.getLogger(__name__)
SHOWN = 16  # held-out images in reports/autoencoder.png
STAGE = "train_autoencoder"


class ReconstructionError(UserError):
    """The autoencoder's reconstructions lose what the scene shows."""


def _split() -> tuple[list[str], list[dict]]:
    """The keys of every image outside the held-out split (their images are not read
    here), and the held-out rows with their images and scenes."""
    heldout = set(datasets.read_splits(paths.SPLITS)["heldout"])
    keys = [r["key"] for r in datasets.load_rows(paths.DATASET, [])]
    held = datasets.load_rows(paths.DATASET, ["image", "meta"], heldout)
    return [k for k in keys if k not in heldout], held


def corpus_size(params: Params) -> int:
    """Fresh renders beside the dataset's images: `autoencoder.corpus` for the built-in
    world, none for real data (the world's renders are another domain than its images)."""
    return params.autoencoder.corpus if params.data.source == "synthetic" else 0


def corpus(params: Params) -> torch.Tensor:
    """uint8 (corpus_size, 3, S, S): the corpus's fresh renders."""
    seed, size = params.autoencoder.corpus_seed, params.data.image_size
    renders, _ = fresh_renders(world_config(params), corpus_size(params), seed, size,
                               "autoencoder corpus")  # fmt: skip
    return renders


def training_images(params: Params, rows: list[dict]) -> torch.Tensor:
    """uint8 (N, 3, S, S): the rows' images, then the corpus's fresh renders."""
    images = datasets.images_tensor([r["image"] for r in rows], params.data.image_size)
    return torch.cat([images, corpus(params)]) if corpus_size(params) else images


def training_data(params: Params, keys: list[str], scratch: Path) -> torch.Tensor | Stream:
    """What the autoencoder trains on: the images of `keys`, then the corpus's renders.
    Held in memory, or, when `data.stream` says so, streamed: the dataset's from its
    shards, the corpus's from shards written to `scratch`, in one seeded order."""
    size, sp = params.data.image_size, params.data.stream
    n = len(keys) + corpus_size(params)
    if not streaming.streams(sp.mode, sp.memory_gb, n * 3 * size**2):  # uint8 RGB
        return training_images(params, datasets.load_rows(paths.DATASET, ["image"], set(keys)))
    log.info("train_autoencoder: streaming %d images from %s", n, paths.DATASET)
    index = streaming.shard_index(paths.DATASET, keys)
    if corpus_size(params):
        index = streaming.join(index, streaming.write_images(scratch, corpus(params)))
    return ImageStream(index, size, params.autoencoder.batch_size, params.seed, sp.buffer,
                       sp.workers)  # fmt: skip


def _scene_accuracy(images: torch.Tensor, recon: torch.Tensor, rows: list[dict]) -> dict:
    """The oracle's reading of the reconstructions against the scenes behind them, and
    of the originals (what the autoencoder could at best keep)."""
    oracle = oracle_lib.load(paths.ORACLE)
    scenes = [Scene.from_dict(json.loads(r["meta"])["scene"]) for r in rows]
    target = oracle_lib.stack_targets(scenes)
    read = lambda x: oracle_lib.accuracy(oracle_lib.predict(oracle, x), target)  # noqa: E731
    return {
        "reconstructions": {k: round(v, 4) for k, v in read(recon).items()},
        "originals": {k: round(v, 4) for k, v in read(images).items()},
    }


def _figure(images: torch.Tensor, recon: torch.Tensor, scale: int = 4) -> Image.Image:
    """Originals (top row) above their reconstructions (bottom row)."""
    rows = [torch.cat(list(x[:SHOWN]), dim=2) for x in (images, recon)]  # (3, H, n*W) each
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()
    image = Image.fromarray(np.ascontiguousarray(grid))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def _write_none(recorded: dict) -> dict:
    """`autoencoder.model: none`: every output dvc.yaml declares, saying there is no
    autoencoder (the generator works in pixels, or in a saved pipeline's own VAE)."""
    with io.atomic_path(paths.AUTOENCODER) as tmp:
        tmp.mkdir()
        lineage.write_lineage(tmp, "train_autoencoder", {}, {"autoencoder": recorded})
    report = {"autoencoder": "none"}
    io.write_json(paths.AUTOENCODER_REPORT, report)
    write_skipped(STAGE, {"skipped": "autoencoder.model is none"})
    note = Image.new("RGB", (160, 16), "white")
    ImageDraw.Draw(note).text((2, 2), "autoencoder.model: none", fill="black")
    with io.atomic_path(paths.AUTOENCODER_FIGURE) as tmp:
        note.save(tmp, format="PNG")
    return report


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    ap = params.autoencoder
    device = devices.resolve(ap.device, "autoencoder.device")
    if not ap.enabled:  # no other key matters: editing one reruns nothing downstream
        return _write_none({"model": ap.model})
    recorded = ap.model_dump(exclude={"device"})  # where it ran: in `compute`
    par = Parallel.start(device)
    keys, held = _split()
    size = params.data.image_size
    compute, record = precision.settle(ap.precision, par.device, "autoencoder.precision")
    vae = ae_lib.create_builtin(ap.model, size, params.seed)
    config = ae_lib.AutoencoderTrainConfig(  # no weight decay: a reconstruction needs none
        steps=ap.steps, batch_size=ap.batch_size, lr=ap.lr, warmup_steps=ap.warmup_steps,
        weight_decay=0.0, kl_weight=ap.kl_weight, grad_clip=ap.grad_clip, precision=compute,
        seed=params.seed, edge_weight=ap.edge_weight, grad_accumulation=ap.grad_accumulation,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="recaption-corpus-") as scratch:
        images = training_data(params, keys, Path(scratch))
        data = images.identity() if isinstance(images, Stream) else images
        checkpoints = resume.checkpoints(STAGE, [vae, data, config], record, ap.steps,
                                         clean=par.is_main)  # fmt: skip
        with main_live(STAGE, par.is_main) as live:
            metrics = ae_lib.train_autoencoder(
                vae, images, config, step_logger(live) if live else None, par, checkpoints
            )
    if not par.is_main:  # the main process checks and writes the model
        return metrics
    held_images = datasets.images_tensor([r["image"] for r in held], size)
    recon = ae_lib.reconstruct(vae, held_images)
    error = (recon.float() - held_images.float()) / 255
    report = {
        "train_images": len(images),
        "heldout_images": len(held),
        "latent_shape": [vae.config.latent_channels, *[size // ae_lib.factor(vae)] * 2],
        "train_l1": round(metrics["l1"], 5),
        "heldout_l1": round(float(error.abs().mean()), 5),
        "heldout_psnr": round(float(-10 * torch.log10(error.pow(2).mean())), 2),
        "scaling_factor": round(metrics["scaling_factor"], 5),
        "compute": record,
    }
    synthetic = params.data.source == "synthetic"
    if synthetic:
        report["oracle"] = _scene_accuracy(held_images, recon, held)
        report["min_scene_accuracy"] = ap.min_scene_accuracy
    io.write_json(paths.AUTOENCODER_REPORT, report)
    with io.atomic_path(paths.AUTOENCODER_FIGURE) as tmp:
        _figure(held_images, recon).save(tmp, format="PNG")
    if synthetic and report["oracle"]["reconstructions"]["scene"] < ap.min_scene_accuracy:
        raise ReconstructionError(
            f"the oracle reads {report['oracle']['reconstructions']['scene']:.3f} of the held-out "
            f"reconstructions right, below autoencoder.min_scene_accuracy={ap.min_scene_accuracy}"
            ": raise autoencoder.steps or the latent channels (see reports/autoencoder.png)"
        )
    with io.atomic_path(paths.AUTOENCODER) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
        lineage.write_lineage(
            tmp, "train_autoencoder", {"dataset": paths.DATASET, "splits": paths.SPLITS},
            {"seed": params.seed, "data.image_size": size, "autoencoder": recorded},
            metrics={k: report[k] for k in ("heldout_l1", "heldout_psnr", "scaling_factor")},
            compute=record,
        )  # fmt: skip
    resume.finish(STAGE)
    log.info("train_autoencoder: %s", {k: v for k, v in report.items() if k != "compute"})
    return report


def encode_main(params_path: Path = paths.PARAMS) -> dict:
    """encode_latents: data/latents/ for every dataset image (empty without an autoencoder).

    The report describes the output, not this run: how many latents were encoded or
    reused depends on what an earlier (perhaps killed) run left, so that goes to the log.
    """
    params = load_params(params_path)
    device = devices.resolve(params.autoencoder.device, "autoencoder.device")
    result = latents.CacheResult()
    source = latent_space.latent_source(params)
    if source is None:
        paths.LATENTS.mkdir(parents=True, exist_ok=True)
        for stale in paths.LATENTS.glob(io.SHARD_GLOB):
            stale.unlink()
        report = {"images": 0, "shards": 0, "autoencoder": None}
    else:
        vae_dir, identity, size = source
        vae = ae_lib.load(vae_dir).to(device)
        # The built-in autoencoder's batches as they were; a saved pipeline's VAE is bigger.
        batch = 256 if vae_dir == paths.AUTOENCODER else latents.batch_for(size)
        result = latents.update(vae, identity, paths.DATASET, paths.LATENTS, size, batch)
        report = {"images": result.images, "shards": len(io.shard_paths(paths.LATENTS)),
                  "autoencoder": latents.cache_fingerprint(identity)}  # fmt: skip
    io.write_json(paths.LATENTS_REPORT, report)
    return {**report, **result.to_dict()}

"""train_autoencoder and encode_latents: the latent space the built-in generator works in.

train_autoencoder trains `autoencoder.model` (an AutoencoderKL JSON) on every image
outside the held-out split (on the built-in world, with `autoencoder.corpus` fresh
renders beside them), then checks that its reconstructions keep the scene: on
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
)
from recaption.corpus import fresh_renders
from recaption.errors import UserError
from recaption.live import main_live, step_logger, write_skipped
from recaption.models import autoencoder as ae_lib
from recaption.models import oracle as oracle_lib
from recaption.parallel import Parallel
from recaption.params import Params, load_params
from recaption.synthetic import world_config
from recaption.world import Scene

log = logging.getLogger(__name__)
SHOWN = 16  # held-out images in reports/autoencoder.png
STAGE = "train_autoencoder"


class ReconstructionError(UserError):
    """The autoencoder's reconstructions lose what the scene shows."""


def _split(params: Params) -> tuple[list[dict], list[dict]]:
    heldout = datasets.read_splits(paths.SPLITS)["heldout"]
    rows = datasets.load_rows(paths.DATASET, ["image", "meta"])
    return [r for r in rows if r["key"] not in heldout], [r for r in rows if r["key"] in heldout]


def corpus_size(params: Params) -> int:
    """Fresh renders beside the dataset's images: `autoencoder.corpus` for the built-in
    world, none for real data (the world's renders are another domain than its images)."""
    return params.autoencoder.corpus if params.data.source == "synthetic" else 0


def training_images(params: Params, rows: list[dict]) -> torch.Tensor:
    """uint8 (N, 3, S, S): the rows' images, then the corpus's fresh renders."""
    size = params.data.image_size
    images = datasets.images_tensor([r["image"] for r in rows], size)
    if n := corpus_size(params):
        seed = params.autoencoder.corpus_seed
        extra, _ = fresh_renders(world_config(params), n, seed, size, "autoencoder corpus")
        images = torch.cat([images, extra])
    return images


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
    train, held = _split(params)
    size = params.data.image_size
    images = training_images(params, train)
    compute, record = precision.settle(ap.precision, par.device, "autoencoder.precision")
    vae = ae_lib.create_builtin(ap.model, size, params.seed)
    config = ae_lib.AutoencoderTrainConfig(  # no weight decay: a reconstruction needs none
        steps=ap.steps, batch_size=ap.batch_size, lr=ap.lr, warmup_steps=ap.warmup_steps,
        weight_decay=0.0, kl_weight=ap.kl_weight, grad_clip=ap.grad_clip, precision=compute,
        seed=params.seed, edge_weight=ap.edge_weight, grad_accumulation=ap.grad_accumulation,
    )  # fmt: skip
    checkpoints = resume.checkpoints(STAGE, [vae, images, config], record, ap.steps,
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

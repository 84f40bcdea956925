"""train_generator: the text-to-image model, trained on the blended captions.

Trains on every image outside the held-out split with the caption the blend gave
it (redrawn each epoch when `blend.mode` is per_epoch). Built in, a fresh
pipeline from an architecture JSON whose tokenizer is trained on the blend's
captions: in the trained autoencoder's latent space (models/autoencoder, trained
on the cached latents of data/latents) when there is one, else on pixels or pixel
patches (the JSON's `patch_size`). Otherwise a saved pipeline folder is fine-tuned:
on its frozen VAE's latents that encode_latents cached, with its frozen text
encoder's states cached per caption (`recaption.text_states`), the whole UNet or,
with `generator.lora.rank`, a LoRA merged into it before saving. A checkpoint
every `generator.checkpoint_every` steps under data/.work/ lets a killed run
resume. Output: models/generator/ (save_pretrained, EMA weights) with a
lineage.json naming the caption version it was trained on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from transformers import CLIPTextModel

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
    text_states,
)
from recaption.blend import SOURCES
from recaption.blend_params import blend_of
from recaption.live import main_live, step_logger
from recaption.models import autoencoder as ae_lib
from recaption.models import clip as clip_lib
from recaption.models import clip_text, lora
from recaption.models import generator as gen_lib
from recaption.models.generator_train import GeneratorTrainConfig, train_generator
from recaption.models.tokenizer import train_tokenizer
from recaption.parallel import Parallel
from recaption.params import Params, load_params

log = logging.getLogger(__name__)
STAGE = "train_generator"


def start_pipeline(params: Params, texts: list[str]) -> gen_lib.GeneratorPipeline:
    """Built in: a fresh pipeline, in the trained autoencoder's latent space if there is
    one; otherwise the saved pipeline `generator.model`. Either samples with
    `generator.scheduler`."""
    gp = params.generator
    if Path(gp.model).suffix == ".json":
        encoder, tokenizer = text_encoder(params, texts)
        vae = ae_lib.load(paths.AUTOENCODER) if ae_lib.is_trained(paths.AUTOENCODER) else None
        pipe = gen_lib.create_builtin(
            gp.model, tokenizer, params.data.image_size, seed_of(params), vae, encoder
        )
    else:
        pipe = gen_lib.load(gp.model)
        if gp.lora.rank:
            lora.add(pipe.unet, gp.lora.rank, gp.lora.scale_alpha, gp.lora.targets, seed_of(params))
    pipe.set_scheduler(gp.scheduler)
    return pipe


def text_encoder(params: Params, texts: list[str]) -> tuple[CLIPTextModel | None, Any]:
    """A built-in generator's (text encoder, tokenizer): the pipeline's CLIP text tower
    and its BPE (`generator.text_encoder: clip`), or (None: the JSON's fresh encoder, a
    tokenizer trained on the blend's captions `texts`)."""
    gp = params.generator
    if gp.text_encoder == "own":
        return None, train_tokenizer(texts, gp.vocab_size, wrap=True)
    encoder = clip_text.text_encoder(clip_lib.load(paths.CLIP))
    return encoder, clip_text.tokenizer(encoder.config.max_position_embeddings)


def training_data(
    params: Params,
    pipe: gen_lib.GeneratorPipeline,
    keys: list[str],
    pngs,
    cached: str | None = None,
) -> torch.Tensor | streaming.Stream:
    """What the UNet trains on: the cached latents (scaled) of a latent pipeline (the
    built-in autoencoder's, or a saved pipeline's frozen VAE's that encode_latents
    cached); else the images. Either is held in memory or, when `data.stream` says so,
    streamed from its shards (a saved pipeline's VAE then encodes each streamed batch of
    images). `cached`: what `cached_latents` says."""
    sp, gp = params.data.stream, params.generator
    if cached is not None:
        scale = pipe.vae.config.scaling_factor
        if not streams(params, len(keys) * latents.row_bytes(paths.LATENTS)):
            return latents.read(paths.LATENTS, keys) * scale
        log.info("train_generator: streaming %d latents from %s", len(keys), paths.LATENTS)
        index = streaming.shard_index(paths.LATENTS, keys)
        return streaming.LatentStream(index, scale, gp.batch_size, seed_of(params), sp.buffer,
                                      sp.workers)  # fmt: skip
    if streams(params, len(keys) * 3 * pipe.image_size**2):  # uint8 RGB
        log.info("train_generator: streaming %d images from %s", len(keys), paths.DATASET)
        index = streaming.shard_index(paths.DATASET, keys)
        return streaming.ImageStream(index, pipe.image_size, gp.batch_size, seed_of(params),
                                     sp.buffer, sp.workers)  # fmt: skip
    return datasets.images_tensor(pngs(), pipe.image_size)


def cached_latents(params: Params, pipe: gen_lib.GeneratorPipeline) -> str | None:
    """The identity of the VAE whose latents data/latents holds for `pipe`, or None when
    it holds none of `pipe`'s VAE (pixel space; or encode_latents has not run for this
    VAE, and each batch is encoded as it comes)."""
    if pipe.vae is None:
        return None
    identity = latent_space.cached_identity(params)
    if identity is None:
        log.warning("train_generator: data/latents holds no latents of %s's VAE: each batch "
                    "is encoded (run encode_latents)", params.generator.model)  # fmt: skip
    return identity


def text_cache(params: Params, pipe: gen_lib.GeneratorPipeline) -> text_states.TextStates | None:
    """Cached states of a saved pipeline's frozen text encoder (prompts padded to its fixed
    length); None when the text encoder trains, or is the built-in one."""
    gp = params.generator
    folder = Path(gp.model)
    if gp.train_text_encoder or folder.suffix == ".json" or pipe.fixed_length is None:
        return None
    key = text_states.fingerprint(folder / "text_encoder", folder / "tokenizer", pipe.fixed_length)
    return text_states.TextStates(pipe.encode_prompts, key, paths.TEXT_STATES)


def recorded(params: Params) -> dict:
    """The generator's params as its lineage and checkpoints record them: LoRA only when on,
    the text encoder only when it is not the JSON's own (the built-in default's lineage
    stays as it was)."""
    gp = params.generator
    unused = (set() if gp.lora.rank else {"lora"}) | (set() if uses_clip(params) else
                                                      {"text_encoder"})  # fmt: skip
    return gp.model_dump(exclude={"device"} | unused)


def uses_clip(params: Params) -> bool:
    """Whether the generator reads prompts through the pipeline's CLIP (models/clip)."""
    return params.generator.text_encoder == "clip"


def streams(params: Params, held_bytes: int) -> bool:
    """Whether training data that would take `held_bytes` in memory is streamed."""
    sp = params.data.stream
    return streaming.streams(sp.mode, sp.memory_gb, held_bytes)


def edge_maps(
    params: Params, pipe: gen_lib.GeneratorPipeline, images, keys: list[str]
) -> torch.Tensor | None:
    """The edge maps the edge-weighted loss reads (`generator.edge_weight`) on the model
    space's grid: the held images', or, under cached latents, those cached beside them
    (the pixels are never read). None when off, or when streaming: each batch carries or
    yields its own."""
    if not params.generator.edge_weight or isinstance(images, streaming.Stream):
        return None
    if images.is_floating_point():
        return latents.read(paths.LATENTS, keys, edges=True)
    return ae_lib.pooled_edges(images, pipe.unet.config.sample_size)


def seed_of(params: Params) -> int:
    """The generator's own seed: the global seed plus `generator.seed`."""
    return params.seed + params.generator.seed


def checkpoint_dir(
    params: Params,
    caption_version: str,
    compute: dict,
    clean: bool = True,
    streamed: bool = False,
    cached: str | None = None,
) -> Path:
    """Where this run's checkpoints live: named by everything training depends on, the
    resolved precision and hardware included, so a run never resumes another's (and,
    with `clean`, other runs' leftovers are removed). Its own interval
    (`generator.checkpoint_every`), so only the folder is `resume`'s."""
    latent = ae_lib.is_trained(paths.AUTOENCODER)
    model = Path(params.generator.model)  # a JSON or a saved pipeline folder
    key = {
        "captions": caption_version,
        "dataset": lineage.tree_hash(paths.DATASET),
        "splits": lineage.tree_hash(paths.SPLITS),
        # The latent space, and so the latents it trains on.
        "autoencoder": ae_lib.fingerprint(paths.AUTOENCODER) if latent else None,
        # The text tower it reads prompts through.
        **({"clip": lineage.tree_hash(paths.CLIP)} if uses_clip(params) else {}),
        # A saved pipeline's VAE latents: cached ones, or each batch encoded as it comes.
        **({"latents": cached} if cached and model.suffix != ".json" else {}),
        "generator": recorded(params),
        # What generator.model names, not only its path: an edited JSON is another model.
        "architecture": lineage.tree_hash(model) if model.exists() else None,
        "blend": params.blend.model_dump(),
        "seed": params.seed,
        # A streamed run's batches follow the stream's order, which its settings set.
        **({"stream": params.data.stream.model_dump()} if streamed else {}),
    }
    return resume.folder(STAGE, [key], compute, clean)


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    par = Parallel.start(devices.resolve(params.generator.device, "generator.device"))
    heldout = datasets.read_splits(paths.SPLITS)["heldout"]
    table = pq.read_table(paths.RELABELED_CAPTIONS).to_pylist()
    table = [r for r in table if r["key"] not in heldout]
    keys = [r["key"] for r in table]
    candidates = {s: [r[s] for r in table] for s in SOURCES}
    blend = blend_of(params)
    pipe = start_pipeline(params, [r["caption"] for r in table])
    rows = lambda: datasets.load_rows(paths.DATASET, ["image"], set(keys))  # noqa: E731
    pngs = lambda: [r["image"] for r in rows()]  # noqa: E731
    cached = cached_latents(params, pipe)
    images = training_data(params, pipe, keys, pngs, cached)
    edges = edge_maps(params, pipe, images, keys)
    compute, record = precision.settle(params.generator.precision, par.device,
                                       "generator.precision")  # fmt: skip
    config = GeneratorTrainConfig.of(params.generator, seed=seed_of(params), precision=compute)
    caption_version = lineage.tree_hash(paths.RELABELED)
    streamed = isinstance(images, streaming.Stream)
    checkpoints = checkpoint_dir(params, caption_version, record, par.is_main, streamed, cached)
    states = text_cache(params, pipe)
    with main_live("train_generator", par.is_main) as live:
        metrics = train_generator(
            pipe,
            images,
            lambda epoch: blend.captions(keys, candidates, epoch)[0],
            config,
            checkpoints,
            step_logger(live) if live else None,
            par,
            edges,
            states,
        )
    if states is not None:
        metrics["text_states"] = {"loaded": states.loaded, "encoded": states.encoded}
    if not par.is_main:  # the main process writes the model
        return metrics
    if states is not None:
        states.save()
    if lora.adapted(pipe.unet):  # saved as a plain UNet any diffusers pipeline loads
        lora.merge(pipe.unet)
    extra = {"processes": par.world} if par.world > 1 else {}
    has_autoencoder = ae_lib.is_trained(paths.AUTOENCODER)
    with io.atomic_path(paths.GENERATOR) as tmp:
        pipe.save_pretrained(tmp)
        lineage.write_lineage(
            tmp,
            "train_generator",
            {
                "captions": paths.RELABELED,
                "dataset": paths.DATASET,
                "splits": paths.SPLITS,
                **({"autoencoder": paths.AUTOENCODER} if has_autoencoder else {}),
                **({"clip": paths.CLIP} if uses_clip(params) else {}),
            },
            {
                "seed": params.seed,
                "generator": recorded(params),
                "blend": params.blend.model_dump(),
            },  # fmt: skip
            caption_version=caption_version,
            metrics={"loss": metrics["loss"], "steps": metrics["steps"], **extra},
            compute=record,
        )
    resume.finish(STAGE)
    log.info("train_generator: %s", metrics)
    return metrics

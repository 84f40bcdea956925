"""clip_pretrain: the CLIP the pipeline embeds with, trained here or taken pretrained.

With `clip.pretrained: none` the architecture is trained contrastively on the
dataset's image-caption pairs (the held-out split excluded), with a pretraining
corpus of fresh world renders (`clip.train.corpus`, a share of them with a twin that
differs in one shape: `clip.train.twins`) and NegCLIP hard negatives
(`clip.train.hard_negatives`) when asked, its images held in memory or, past
`data.stream.memory_gb`, streamed from shards; otherwise the
pretrained weights (an open_clip tag or a local .safetensors) are loaded. Either
way the model is saved to models/clip/ as safetensors with its lineage, and its
held-out retrieval recall is logged through dvclive.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from recaption import datasets, devices, io, lineage, paths, precision, resume, streaming
from recaption.corpus import fresh_renders, pixels_of
from recaption.errors import UserError
from recaption.live import main_live
from recaption.models import captioner
from recaption.models import clip as clip_lib
from recaption.models.clip_train import (
    CaptionLoss,
    ClipTrainConfig,
    SceneLoss,
    retrieval_recall,
    train_clip,
)
from recaption.parallel import Parallel
from recaption.params import Params, load_params
from recaption.streaming import ImageStream, Stream
from recaption.synthetic import world_config
from recaption.world import Scene, WorldConfig, twin_example
from recaption.world.negatives import swap_word

log = logging.getLogger(__name__)
STAGE = "clip_pretrain"
# The captioning loss's decoder, beside its GPT-2 JSON: tokenizer vocabulary, prefix
# vectors from the pooled embedding, and the prefix MLP's width. Its own, not the
# captioner's: it is dropped after training, and the captioner's settings rerun nothing here.
DECODER_VOCAB, DECODER_PREFIX, DECODER_HIDDEN = 1024, 4, 512


def training_pairs(params: Params) -> tuple[list[str], list[list[str]]]:
    """Keys and caption lists (ground truth, plus annotations when configured) of every
    image outside the held-out split, annotated ones repeated (their images are not read
    here: see `training_images`)."""
    splits = datasets.read_splits(paths.SPLITS)
    extra: dict[str, list[str]] = {}
    if params.clip.train.captions == "ground_truth+annotations":
        for path in (paths.SHORT, paths.DESCRIPTIVE):
            for key, caption in datasets.read_captions(path).items():
                extra.setdefault(key, []).append(caption)
    heldout = set(splits["heldout"])
    rows = [r for r in datasets.load_rows(paths.DATASET, ["caption"]) if r["key"] not in heldout]
    # Annotated images carry the subset's careful captions, which name shapes and
    # positions that alt-text rarely does: show them more often.
    repeat = params.clip.train.annotated_repeat
    rows = [r for r in rows for _ in range(repeat if r["key"] in extra else 1)]
    captions = [[r["caption"], *extra.get(r["key"], [])] for r in rows]
    return [r["key"] for r in rows], captions


def training_images(
    params: Params,
    keys: list[str],
    extra: torch.Tensor | None,
    size: int,
    scratch: Path,
    twins: bool = False,
) -> torch.Tensor | Stream:
    """The training images: the dataset's of `keys` (a key given twice, twice), then the
    corpus's renders `extra`. Held in memory, or, when `data.stream` says so, streamed: the
    dataset's from its shards, the corpus's from shards written to `scratch`, in one
    seeded order (twins, trained in their originals' batches, need the held order)."""
    sp = params.data.stream
    n = len(keys) + (0 if extra is None else len(extra))
    if not streaming.streams(sp.mode, sp.memory_gb, n * 3 * size**2):  # uint8 RGB
        pngs = {
            r["key"]: r["image"] for r in datasets.load_rows(paths.DATASET, ["image"], set(keys))
        }
        pixels = datasets.images_tensor([pngs[k] for k in keys], size)
        return pixels if extra is None else torch.cat([pixels, extra])
    if twins:
        raise UserError(
            f"{n} training images at {size} px are streamed (data.stream), and clip.train.twins "
            "trains each twin in its original's batch, which a streamed order cannot: set "
            "clip.train.twins: 0, or data.stream.mode: never if they fit in memory"
        )
    log.info("clip_pretrain: streaming %d images from %s", n, paths.DATASET)
    index = streaming.shard_index(paths.DATASET, keys)
    if extra is not None:
        index = streaming.join(index, streaming.write_images(scratch, extra))
    return ImageStream(index, size, params.clip.train.batch_size, params.seed, sp.buffer,
                       sp.workers)  # fmt: skip


def corpus_size(params: Params) -> int:
    """Fresh renders in the pretraining corpus: `clip.train.corpus` for the built-in world,
    none for real data (the world's renders are another domain than its images)."""
    return params.clip.train.corpus if params.data.source == "synthetic" else 0


def corpus_pairs(
    cfg: WorldConfig, n: int, seed: int, size: int, twins: float = 0.0
) -> tuple[torch.Tensor, list[list[str]], list[tuple[int, int]], list[Scene]]:
    """A pretraining corpus: `n` fresh renders of the world `cfg` seeded by `seed`, each
    with its alt-text, short and descriptive caption (a caption mix of the poor and the
    good), then the twins of a `twins` share of them (recaption.world.twins).

    Returns:
        uint8 (n + m, 3, size, size) images, their caption lists, the m (original, twin)
        index pairs (the twins follow the n renders), and every image's scene.
    """
    out, examples = fresh_renders(cfg, n, seed, size, "clip corpus")
    captions = [[ex.caption, ex.short, ex.descriptive] for ex in examples]
    scenes = [ex.scene for ex in examples]
    twin_pixels, pairs = [], []
    for i in tqdm(range(n) if twins else (), desc="clip twins", unit="img", mininterval=2):
        if (ex := twin_example(seed, i, cfg, twins)) is not None:
            pairs.append((i, n + len(twin_pixels)))
            twin_pixels.append(pixels_of(ex.image, size))
            captions.append([ex.caption, ex.short, ex.descriptive])
            scenes.append(ex.scene)
    if twin_pixels:
        out = torch.cat([out, torch.stack(twin_pixels)])
    return out, captions, pairs, scenes


def caption_loss(params: Params, clip: clip_lib.Clip, captions: list[list[str]]):
    """The captioning loss `clip.train.caption_loss` asks for (None at weight 0): a fresh
    decoder reading the features the embed stage will cache (pooled + `embed.grid`)."""
    train = params.clip.train
    if train.caption_loss == 0:
        return None
    texts = sorted({t for options in captions for t in options})
    layout = clip_lib.feature_layout(clip, params.embed.grid)
    decoder = captioner.create(train.caption_decoder, texts, DECODER_VOCAB, layout,
                               DECODER_PREFIX, DECODER_HIDDEN, params.seed)  # fmt: skip
    return CaptionLoss(decoder, train.caption_loss, params.embed.grid)


def scene_loss(params: Params, clip: clip_lib.Clip, scenes: list[Scene | None]):
    """The scene loss `clip.train.scene_loss` asks for (None at weight 0, or when no scene
    is given): a fresh linear head reading the features the embed stage will cache (pooled
    + `embed.grid`), told the scenes of the corpus renders only (`scenes` is None for
    every dataset image)."""
    weight = params.clip.train.scene_loss
    if weight == 0 or all(s is None for s in scenes):  # real data: no corpus, no scenes
        return None
    pooled, cells, cell_dim = clip_lib.feature_layout(clip, params.embed.grid)
    return SceneLoss.create(pooled + cells * cell_dim, scenes, weight, params.embed.grid,
                            params.seed)  # fmt: skip


def heldout_set(size: int):
    """Held-out images and one caption each: the reference descriptive caption where the
    source has one (it names what the image shows), else the ground truth."""
    keys = datasets.read_splits(paths.SPLITS)["heldout"]
    rows = datasets.load_rows(paths.DATASET, ["image", "caption", "descriptive"], keys)
    pixels = datasets.images_tensor([r["image"] for r in rows], size)
    return pixels, [r["descriptive"] or r["caption"] for r in rows]


def main(params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    cp = params.clip
    par = Parallel.start(devices.resolve(cp.train.device, "clip.train.device"))
    pretrained = None if cp.pretrained == "none" else cp.pretrained
    clip = clip_lib.create(cp.model, pretrained, seed=params.seed)
    heldout = heldout_set(clip.image_size)
    compute, record = precision.settle(cp.train.precision, par.device, "clip.train.precision")
    with (
        main_live(STAGE, par.is_main) as live,
        tempfile.TemporaryDirectory(prefix="recaption-corpus-") as tmp,
    ):
        scratch = Path(tmp)  # where a streamed corpus's shards live while training
        if pretrained is None:
            keys, captions = training_pairs(params)
            extra, twins = None, []
            scenes: list[Scene | None] = [None] * len(keys)  # the dataset's are not told
            if n := corpus_size(params):
                world = world_config(params)
                extra, extra_captions, extra_twins, extra_scenes = corpus_pairs(
                    world, n, cp.train.corpus_seed, clip.image_size, cp.train.twins
                )
                twins = [(len(keys) + o, len(keys) + t) for o, t in extra_twins]
                captions += extra_captions
                scenes += extra_scenes
            pixels = training_images(params, keys, extra, clip.image_size, scratch, bool(twins))
            del extra  # held in `pixels`, or written to `scratch`
            config = ClipTrainConfig.of(cp.train, seed=params.seed, precision=compute)

            def log_step(step: int, metrics: dict) -> None:
                live.step = step
                for name, value in metrics.items():
                    live.log_metric(("heldout/" if "recall" in name else "train/") + name, value)
                live.next_step()

            negative = swap_word if cp.train.hard_negatives else None
            captioning = caption_loss(params, clip, captions)
            scene = scene_loss(params, clip, scenes)
            data = pixels.identity() if isinstance(pixels, Stream) else pixels
            identity = [clip.model, data, captions, *heldout, config, negative is not None]
            if captioning is not None:
                identity += [captioning.decoder, captioning.weight, captioning.grid]
            if twins:
                identity.append(twins)
            if scene is not None:
                identity += [scene.head, scene.weight, scene.grid, *scene.targets.values()]
            checkpoints = resume.checkpoints(STAGE, identity, record, config.steps,
                                             clean=par.is_main)  # fmt: skip
            metrics = train_clip(clip, pixels, captions, config, heldout,
                                 log_step if live else None, par, desc=STAGE,
                                 negative=negative, checkpoints=checkpoints,
                                 captioning=captioning, twins=twins, scene=scene)  # fmt: skip
        else:
            metrics = retrieval_recall(clip, *heldout)
            for name, value in metrics.items() if live else ():
                live.log_metric("heldout/" + name, value)
    if not par.is_main:  # the main process writes the model
        return metrics
    if par.world > 1:
        metrics = {**metrics, "processes": par.world}
    recorded = cp.model_dump(exclude={"train": {"device"}})  # where it ran: in `compute`
    with io.atomic_path(paths.CLIP) as tmp:
        clip_lib.save(clip, tmp)
        inputs = {"dataset": paths.DATASET, "splits": paths.SPLITS}
        if pretrained is None and cp.train.captions == "ground_truth+annotations":
            inputs.update(short=paths.SHORT, descriptive=paths.DESCRIPTIVE)
        lineage.write_lineage(
            tmp,
            "clip_pretrain",
            inputs,
            {"seed": params.seed, "data.source": params.data.source, "clip": recorded},
            metrics={k: round(v, 6) for k, v in metrics.items()},
            compute=record if pretrained is None else None,
        )
    resume.finish(STAGE)
    log.info("clip_pretrain: %s", {k: round(v, 3) for k, v in metrics.items()})
    return metrics

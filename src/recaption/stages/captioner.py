"""captioner_pretrain, captioner_stage1, captioner_stage2: one routine, three stages.

    pretrain  ground-truth captions of every image outside the held-out split,
              starting from `captioner.lm` (built-in: fresh GPT-2, tokenizer trained here;
              `captioner.kind: vlm`: a pretrained VLM, its tower frozen, models/vlm.py)
    stage1    the short caption set (main subject), from the pretrained weights
    stage2    the descriptive caption set, from the stage-1 weights

Each stage holds out a seeded `captioner.val_fraction` of its images, whose loss it
logs (and with `keep: best` stops early on), logs its curves through dvclive, and saves
a `save_pretrained` folder with the mapper and a lineage.json under
models/captioner/<stage>/.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from recaption import (
    datasets,
    devices,
    embed,
    io,
    lineage,
    paths,
    precision,
    resume,
    sampling,
    streaming,
)
from recaption.errors import UserError
from recaption.live import main_live, step_logger
from recaption.models import captioner as captioner_lib
from recaption.models import captioners, vlm
from recaption.models.captioner_train import CaptionTrainConfig, train_captioner
from recaption.parallel import Parallel
from recaption.params import VLM_ONLY_KEYS, CaptionerStageParams, Params, load_params

log = logging.getLogger(__name__)
STAGES = ("pretrain", "stage1", "stage2")
PARENT = {"stage1": "pretrain", "stage2": "stage1"}
CAPTION_SETS = {"stage1": paths.SHORT, "stage2": paths.DESCRIPTIVE}


def folder(stage: str) -> Path:
    return paths.CAPTIONER / stage


def stage_pairs(stage: str) -> list[tuple[str, str]]:
    """(key, caption) pairs this stage trains on: one per image, or with annotate.augment
    an image's caption and its rewrites."""
    if stage in CAPTION_SETS:
        return datasets.read_caption_rows(CAPTION_SETS[stage])
    heldout = datasets.read_splits(paths.SPLITS)["heldout"]
    rows = datasets.load_rows(paths.DATASET, ["caption"])
    return [(r["key"], r["caption"]) for r in rows if r["key"] not in heldout]


def of_keys(pairs: list[tuple[str, str]], keys: list[str]) -> list[tuple[str, str]]:
    """The pairs of `keys`, in key order (a key's pairs in file order)."""
    chosen = set(keys)
    return sorted((p for p in pairs if p[0] in chosen), key=lambda p: p[0])


def split_pairs(
    stage: str, pairs: list[tuple[str, str]], params: Params
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, validation) pairs of a stage: a seeded `captioner.val_fraction` of its
    images is held back, so no rewrite of a validation caption is trained on."""
    keys = sorted({key for key, _ in pairs})
    n_val = max(1, round(len(keys) * params.captioner.val_fraction))
    val_keys = sorted(sampling.pick(keys, n_val, params.seed, f"captioner-{stage}-val"))
    train_keys = sorted(set(keys) - set(val_keys))
    return of_keys(pairs, train_keys), of_keys(pairs, val_keys)


def features_and_captions(emb: embed.EmbeddingFolder, pairs: list[tuple[str, str]]) -> tuple:
    """(features (N, ...), captions) of `pairs`, row for row."""
    return features_of(emb, [k for k, _ in pairs]), [c for _, c in pairs]


def features_of(emb: embed.EmbeddingFolder, keys: list[str]) -> torch.Tensor:
    try:
        return torch.from_numpy(emb.features_of(keys))
    except KeyError as err:
        raise UserError(f"{err.args[0]}: rerun embed") from err


def training_features(
    params: Params, emb: embed.EmbeddingFolder, pairs: list[tuple[str, str]], seed: int,
    batch_size: int,
) -> tuple:  # fmt: skip
    """(features, captions) of the training pairs: the features held, or, when they would
    take more than `data.stream.memory_gb` (`data.stream.mode`), a stream of them from the
    embedding shards in the stream's seeded order (`streaming.FeatureStream`)."""
    sp = params.data.stream
    keys, captions = [k for k, _ in pairs], [c for _, c in pairs]
    if not streaming.streams(sp.mode, sp.memory_gb, len(keys) * 4 * sum(emb.widths())):
        return features_of(emb, keys), captions
    log.info("captioner: streaming %d pairs' features from %s", len(keys), paths.IMAGE_EMBEDDINGS)
    try:
        index = streaming.shard_index(paths.IMAGE_EMBEDDINGS, keys)
    except KeyError as err:
        raise UserError(f"{err.args[0]}: rerun embed") from err
    stream = streaming.FeatureStream(index, emb.widths()[1] > 0, batch_size, seed, sp.buffer,
                                     sp.workers)  # fmt: skip
    return stream, captions


def run_identity(params: Params, train: tuple, keys: list[str]) -> list:
    """What the training pairs are, for the checkpoint folder: the features themselves,
    or a stream's rows (the embeddings' CLIP, each key's pixel hash) and settings."""
    if not isinstance(train[0], streaming.Stream):
        return list(train)
    every, shas, clip = embed.read_keys(paths.IMAGE_EMBEDDINGS)
    sha = dict(zip(every, shas, strict=True))
    rows = {"clip": clip, "keys": keys, "shas": [sha[k] for k in keys]}
    return [rows, train[1], params.data.stream.model_dump()]


def feature_dims(emb: embed.EmbeddingFolder, grid: int) -> tuple[int, int, int]:
    """(pooled_dim, grid_cells, cell_dim) of the cached embeddings."""
    pooled, width = emb.widths()
    if not width:
        return pooled, 0, 0
    cells = grid * grid
    return pooled, cells, width // cells


def start_model(stage: str, params: Params, emb: embed.EmbeddingFolder,
                pairs: list[tuple[str, str]]):  # fmt: skip
    """The weights a stage starts from: its parent stage's, or a new captioner for pretrain."""
    if params.captioner.kind == "vlm":
        return start_vlm(stage, params, emb)
    if stage in PARENT:
        return captioners.load(folder(PARENT[stage]))
    cp = params.captioner
    texts = [caption for _, caption in pairs]
    for path in CAPTION_SETS.values():  # the tokenizer must also know the tuning captions
        texts += [caption for _, caption in datasets.read_caption_rows(path)]
    return captioner_lib.create(
        cp.lm,
        texts,
        cp.vocab_size,
        feature_dims(emb, params.embed.grid),
        cp.prefix_length,
        cp.mapper_hidden,
        params.seed,
    )


def start_vlm(stage: str, params: Params, emb: embed.EmbeddingFolder) -> vlm.VlmCaptioner:
    """The VLM a stage tunes (pretrain: `captioner.lm`), its LoRA settings, and a check
    that the cached features are its tower's."""
    cp = params.captioner
    lora = vlm.VlmLora(cp.lora.rank, cp.lora.scale_alpha, tuple(cp.lora.targets), params.seed)
    if stage in PARENT:
        model = captioners.load(folder(PARENT[stage]))
        if not isinstance(model, vlm.VlmCaptioner):
            raise UserError(f"{folder(PARENT[stage])} is not a VLM captioner: rerun it")
        model.lora = lora
    else:
        model = vlm.create(cp.lm, lora, cp.prompt)
    if emb.clip != embed.cache_fingerprint(model.tower().fingerprint(), 0):
        raise UserError(
            f"{paths.IMAGE_EMBEDDINGS} was not made by this captioner's vision tower: rerun embed"
        )
    return model


def lineage_params(stage: str, params: Params, sp: CaptionerStageParams) -> dict:
    """The params a stage's lineage records; a prefix captioner's as they always were."""
    out = {"seed": params.seed, stage: sp.model_dump(exclude={"device"})}
    cp = params.captioner
    vlm_only = set() if cp.kind == "vlm" else set(VLM_ONLY_KEYS)
    if stage == "pretrain":
        out["captioner"] = cp.model_dump(exclude=set(STAGES) | vlm_only)
    elif cp.kind == "vlm":
        out["captioner"] = cp.model_dump(include={"kind", "lora"})  # the prompt: the parent's
    return out


def train_config(
    sp: CaptionerStageParams, examples: int, seed: int, compute: str
) -> CaptionTrainConfig:
    """The stage's loop settings; `compute` is its resolved precision."""
    return CaptionTrainConfig.of(sp, steps=sp.total_steps(examples), seed=seed, precision=compute)


def main(stage: str, params_path: Path = paths.PARAMS) -> dict:
    params = load_params(params_path)
    sp: CaptionerStageParams = getattr(params.captioner, stage)
    par = Parallel.start(devices.resolve(sp.device, f"captioner.{stage}.device"))
    pairs = stage_pairs(stage)
    emb = embed.EmbeddingFolder(paths.IMAGE_EMBEDDINGS)  # only the pairs' rows are read
    model = start_model(stage, params, emb, pairs)
    key = f"captioner.{stage}.precision"
    compute, record = precision.settle(sp.precision, par.device, key)
    train_pairs, val_pairs = split_pairs(stage, pairs, params)
    config = train_config(sp, len(train_pairs), params.seed, compute)
    log.info(
        "captioner %s: %d train / %d val pairs, %d steps",
        stage,
        len(train_pairs),
        len(val_pairs),
        config.steps,
    )
    train = training_features(params, emb, train_pairs, config.seed, config.batch_size)
    val = features_and_captions(emb, val_pairs)
    identity = [model, *run_identity(params, train, [k for k, _ in train_pairs]), *val, config]
    checkpoints = resume.checkpoints(f"captioner_{stage}", identity, record, config.steps,
                                     clean=par.is_main)  # fmt: skip
    with main_live(f"captioner_{stage}", par.is_main) as live:
        metrics = train_captioner(
            model, train, val, config, step_logger(live) if live else None, par, checkpoints
        )
        if live:
            live.summary = {k: v for k, v in metrics.items() if v is not None}
    if not par.is_main:  # the main process writes the model
        return metrics
    if par.world > 1:
        metrics = {**metrics, "processes": par.world}
    with io.atomic_path(folder(stage)) as tmp:
        model.save(tmp)
        inputs = {"embeddings": paths.IMAGE_EMBEDDINGS}
        if stage in PARENT:
            inputs.update(captions=CAPTION_SETS[stage], parent=folder(PARENT[stage]))
        else:
            inputs.update(dataset=paths.DATASET, splits=paths.SPLITS)
        lineage.write_lineage(tmp, f"captioner_{stage}", inputs, lineage_params(stage, params, sp),
                              metrics=metrics, compute=record)  # fmt: skip
    resume.finish(f"captioner_{stage}")
    log.info("captioner %s: %s", stage, metrics)
    return metrics

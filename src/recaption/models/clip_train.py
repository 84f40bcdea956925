"""Contrastive training of a CLIP on image-caption pairs (in memory, CPU- or GPU-sized).

The images of the built-in world are tiny, so they are held as one uint8 tensor and
normalised per batch; each step draws a batch without replacement within an epoch
and one of each image's captions at random, from generators seeded by the step (see
recaption.models.training), so a killed run resumes to the same weights. Twins
(recaption.world.twins) are drawn into their original's batch (see `Twins`). Renders
whose scenes are known can also teach the tower what each grid cell holds (see
`SceneLoss`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from open_clip import ClipLoss
from torch import nn

from recaption import precision
from recaption.models import clip as clip_lib
from recaption.models import oracle
from recaption.models.clip import Clip
from recaption.models.schedule import OptimConfig
from recaption.models.training import (
    Checkpoints,
    Evaluation,
    LogStep,
    Micro,
    epoch_batch,
    fit,
    steps_per_epoch,
)
from recaption.parallel import Parallel
from recaption.world import BACKGROUNDS, COLOUR_NAMES

if TYPE_CHECKING:  # the captioning loss's decoder; stages without one never import it
    from recaption.models.captioner import Captioner
    from recaption.streaming import Stream


@dataclass(frozen=True)
class ClipTrainConfig(OptimConfig):
    # No defaults: the stages pass every field from their params (clip.train,
    # evaluate.clip), the one place the numbers live. Warm-up matters here: contrastive
    # training from scratch collapses without it.
    eval_every: int
    seed: int
    precision: str  # resolved: fp32 | bf16 | fp16 (recaption.precision)


@dataclass
class CaptionLoss:
    """A captioning objective beside the contrastive one, as CoCa and CapPa train.

    `decoder` writes each image's longest caption from the image's features, as the
    cached embedding will hold them (pooled vector and `grid` x `grid` cells,
    `clip_lib.features`), and its next-token loss, times `weight`, joins the contrastive
    loss. A contrastive batch is told apart by colour, background and place, so the
    contrastive loss alone never asks the tower for an object's shape; a caption
    that must be written word by word does. The decoder is thrown away after training.
    """

    decoder: Captioner
    weight: float
    grid: int
    max_tokens: int = 64


@dataclass
class SceneLoss:
    """What each cell of the world's 3x3 grid holds, read from the image's features, beside
    the contrastive loss: supervised pretraining of the tower on scenes it is told.

    A contrastive batch is told apart by colour, background and place, so the contrastive
    loss never asks the tower for an object's shape, and a tower trained on it alone does
    not keep shape (probe about 0.6). A real CLIP keeps it because it has seen far more
    images than any one dataset; here the pretraining corpus's scenes are known, so the
    tower can learn them directly. `head` is one linear map from the features the embed
    stage caches (pooled vector and `grid` x `grid` cells, `clip_lib.features`) to each
    cell's content and colour and the background (the oracle's targets, `oracle.CONTENTS`),
    so what it learns is what the cache holds, linearly; it is thrown away after training.
    `targets` holds a row for every training image, -100 (ignored) where the scene is not
    given (the dataset's own images: their scenes are the ground truth the captioner must
    find, never a training signal).
    """

    head: nn.Linear
    weight: float
    grid: int
    targets: dict[str, torch.Tensor]  # content (N, 9), colour (N, 9), background (N,)

    @classmethod
    def create(cls, feature_dim: int, scenes: Sequence, weight: float, grid: int,
               seed: int) -> SceneLoss:  # fmt: skip
        """A fresh head over `feature_dim` features; `scenes` has one scene (or None) per
        training image."""
        outputs = oracle.CELLS * (len(oracle.CONTENTS) + len(COLOUR_NAMES))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = nn.Linear(feature_dim, outputs + len(BACKGROUNDS))
        n = len(scenes)
        targets = {
            "content": torch.full((n, oracle.CELLS), -100, dtype=torch.long),
            "colour": torch.full((n, oracle.CELLS), -100, dtype=torch.long),
            "background": torch.full((n,), -100, dtype=torch.long),
        }
        known = [i for i, s in enumerate(scenes) if s is not None]
        if known:
            given = oracle.stack_targets([scenes[i] for i in known])
            for name, value in given.items():
                targets[name][known] = value
        return cls(head, weight, grid, targets)

    def loss(self, features: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """Mean cross-entropy of the cells' contents and colours and the background over
        the rows whose scene is given (0 when none is)."""
        n_content, cells = len(oracle.CONTENTS), oracle.CELLS
        logits = self.head(features.float())
        content = logits[:, : cells * n_content].reshape(-1, cells, n_content)
        colour = logits[:, cells * n_content : -len(BACKGROUNDS)].reshape(
            -1, cells, len(COLOUR_NAMES)
        )
        background = logits[:, -len(BACKGROUNDS) :]
        target = {k: v[list(rows)].to(features.device) for k, v in self.targets.items()}
        terms = [
            (content.flatten(0, 1), target["content"].flatten()),
            (colour.flatten(0, 1), target["colour"].flatten()),
            (background, target["background"]),
        ]
        losses = [F.cross_entropy(x, y, ignore_index=-100) for x, y in terms if (y >= 0).any()]
        return torch.stack(losses).mean() if losses else logits.sum() * 0  # zero gradients


@torch.inference_mode()
def retrieval_recall(clip: Clip, images: torch.Tensor, captions: Sequence[str]) -> dict:
    """Image->text and text->image recall@1/@5 where image i matches caption i."""
    clip.model.eval()
    img = F.normalize(clip.model.encode_image(clip.normalise(images)), dim=-1)  # (N, D)
    txt = F.normalize(clip.model.encode_text(clip.tokenizer(list(captions))), dim=-1)  # (N, D)
    sim = img @ txt.T  # (N, N)
    target = torch.arange(len(captions)).unsqueeze(1)
    out = {}
    for name, scores in (("i2t", sim), ("t2i", sim.T)):
        top5 = scores.topk(min(5, len(captions)), dim=1).indices  # (N, 5)
        out[f"{name}_recall@1"] = (top5[:, :1] == target).any(1).float().mean().item()
        out[f"{name}_recall@5"] = (top5 == target).any(1).float().mean().item()
    return out


def hard_negative_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss with hard negatives among the texts, as NegCLIP trains.

    Args:
        img: (B, D) normalised image features.
        txt: (B + M, D) normalised text features: the B captions, then M negatives.
    Each image ranks its caption against every caption and negative of the batch;
    each caption ranks its image against the batch's images, as in CLIP.
    """
    b = img.shape[0]
    logits = scale * img @ txt.T  # (B, B + M)
    target = torch.arange(b, device=img.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :b].T, target)) / 2


class Twins:
    """Image-level minimal pairs: (original, twin) indices of images that differ in one
    shape only (recaption.world.twins), trained side by side.

    A twin always lands in its original's batch, and the two take the same kind of
    caption (the same index into their caption lists), one whose texts differ: the
    contrastive loss can then match each image to its caption, and each caption to its
    image, by the shape alone. Pairs whose texts are the same (off-topic alt-text names
    no shape) would be false negatives, so those captions are not drawn for a pair.
    """

    def __init__(self, pairs: Sequence[tuple[int, int]], captions: Sequence[Sequence[str]]):
        n = len(captions)
        twin = torch.full((n,), -1, dtype=torch.long)
        is_twin = torch.zeros(n, dtype=torch.bool)
        self.kinds: dict[int, list[int]] = {}  # original -> caption indices that differ
        for o, t in pairs:
            if twin[o] >= 0 or is_twin[o] or is_twin[t] or twin[t] >= 0 or o == t:
                raise ValueError(f"twin pair ({o}, {t}) overlaps another pair")
            twin[o], is_twin[t] = t, True
            a, b = captions[o], captions[t]
            self.kinds[o] = [k for k in range(min(len(a), len(b))) if a[k] != b[k]] or [0]
        self.partner = {o: t for o, t in pairs}
        self.n = n
        # Units: each image that is no twin, followed by its twin where it has one.
        self.first = torch.arange(n)[~is_twin]  # (U,)
        self.second = twin[self.first]  # (U,) -1 where the unit is one image

    def batch(self, batch_size: int, step: int, seed: int) -> list[int]:
        """Step `step`'s batch, as `epoch_batch` draws it but by unit: the epoch's
        permutation of units laid end to end is cut every `batch_size` images, and a unit
        joins the batch its first image falls in, so a batch holds batch_size +- 1."""
        epoch, index = divmod(step, steps_per_epoch(self.n, batch_size))
        gen = torch.Generator().manual_seed(seed * 7919 + epoch)
        order = torch.randperm(len(self.first), generator=gen)
        sizes = 1 + (self.second[order] >= 0).long()
        starts = torch.cumsum(sizes, 0) - sizes  # each unit's first image in the run
        units = order[starts // min(batch_size, self.n) == index]
        pairs = torch.stack([self.first[units], self.second[units]], 1).flatten()  # (2U,)
        return pairs[pairs >= 0].tolist()

    def picks(self, idx: list[int], picks: list[int]) -> list[int]:
        """`picks` (one random number per image of the batch) with each pair's two set to
        one caption index whose texts differ, drawn by the original's number."""
        where = {i: j for j, i in enumerate(idx)}
        out = list(picks)
        for j, i in enumerate(idx):
            if i in self.kinds:
                kinds = self.kinds[i]
                out[j] = kinds[picks[j] % len(kinds)]
                if (t := where.get(self.partner[i])) is not None:
                    out[t] = out[j]
        return out


def _step_texts(
    captions: Sequence[Sequence[str]],
    idx: list[int],
    gen: torch.Generator,
    twins: Twins | None = None,
):
    """One caption of each image of the batch, picked at random (the same kind for twins)."""
    picks = torch.randint(0, 1 << 30, (len(idx),), generator=gen).tolist()
    if twins is not None:
        picks = twins.picks(idx, picks)
    return [captions[i][p % len(captions[i])] for i, p in zip(idx, picks, strict=True)]


def train_clip(
    clip: Clip,
    images: torch.Tensor | Stream,
    captions: Sequence[Sequence[str]],
    config: ClipTrainConfig,
    heldout: tuple[torch.Tensor, Sequence[str]] | None = None,
    log: LogStep | None = None,
    par: Parallel | None = None,
    desc: str = "clip",
    negative: Callable[[str, random.Random], str | None] | None = None,
    checkpoints: Checkpoints | None = None,
    captioning: CaptionLoss | None = None,
    twins: Sequence[tuple[int, int]] = (),
    scene: SceneLoss | None = None,
) -> dict:
    """Train `clip` in place.

    Args:
        images: uint8 (N, 3, H, W) at the model's image size, held, or streamed
            (`recaption.streaming.ImageStream`: a step's batch is the stream's).
        captions: for each image, one or more captions; each step picks one at random.
        heldout: images and one caption each, for retrieval recall every `eval_every` steps.
        log: called with (step, metrics) for loss and recall (main process only).
        par: data-parallel training (see recaption.parallel): every process draws the
            step's whole batch and encodes its slice; the contrastive loss gathers every
            process's features, so each image is still contrasted with the whole batch.
        desc: the progress bar's label (the stage's name).
        negative: makes a hard negative of a caption (or None when it cannot); the
            batch's negatives then join its captions on the image side of the loss
            (see `hard_negative_loss`). One process only.
        checkpoints: where a killed run resumes from (see recaption.models.training).
        captioning: a captioning loss beside the contrastive one (see `CaptionLoss`);
            one process only.
        twins: (original, twin) image indices, each twin trained in its original's
            batch with the same kind of caption (see `Twins`); one process only.
        scene: a loss on what each grid cell holds, for the images whose scenes are given
            (see `SceneLoss`); one process only.
    Returns:
        The last logged metrics.
    """
    par = par or Parallel()
    if config.grad_accumulation != 1:
        # Each image is contrasted with the whole batch: micro-batches would shrink that to
        # their own rows, another loss. (open_clip's accum_freq recomputes each micro-batch
        # against the others' cached features; not built here.)
        raise ValueError("contrastive training takes no grad_accumulation: its loss does not split")
    if (negative is not None or captioning or scene or twins) and par.world > 1:
        raise ValueError(
            "hard negatives, captioning, the scene loss and twins are implemented for one "
            "process only: run one process, or set clip.train.hard_negatives: false, "
            "caption_loss: 0, scene_loss: 0 and twins: 0"
        )
    if captioning and scene and captioning.grid != scene.grid:
        raise ValueError(f"captioning reads a grid of {captioning.grid}, scenes {scene.grid}")
    streamed = not torch.is_tensor(images)  # a recaption.streaming.Stream
    if twins and streamed:
        raise ValueError("twins are trained in their originals' batches: hold the images")
    paired = Twins(twins, captions) if twins else None
    model = clip.model.to(par.device)
    named = dict(model.named_parameters())
    if captioning is not None:
        decoder = captioning.decoder.to(par.device)
        named |= {f"decoder.{k}": v for k, v in decoder.named_parameters()}
        longest = [max(texts, key=len) for texts in captions]
    if scene is not None:
        head = scene.head.to(par.device)
        named |= {f"scene_head.{k}": v for k, v in head.named_parameters()}
    forward = par.wrap(model)
    loss_fn = ClipLoss()
    if par.world > 1:
        loss_fn = ClipLoss(gather_with_grad=True, rank=par.rank, world_size=par.world)

    def step_loss(step: int, gen: torch.Generator, micro: Micro) -> torch.Tensor | dict:
        if streamed:
            idx, (batch,) = images.batch(step)
        elif paired is None:
            idx = epoch_batch(len(images), config.batch_size, step, config.seed)
        else:
            idx = paired.batch(config.batch_size, step, config.seed)
        texts = _step_texts(captions, idx, gen, paired)
        model.train()  # an evaluation leaves it in eval mode
        mine = par.share(range(len(idx)), "clip batch_size")
        rows = batch[list(mine)] if streamed else images[[idx[i] for i in mine]]
        pixels = clip.normalise(rows.to(par.device))
        mine_texts = [texts[i] for i in mine]
        rng = random.Random(gen.initial_seed())
        negs = [n for t in mine_texts if negative and (n := negative(t, rng))]
        tokens = clip.tokenizer(mine_texts + negs).to(par.device)
        if captioning is None and scene is None:
            img, txt, scale = forward(pixels, tokens)
        else:
            grid = (captioning or scene).grid
            feats = clip_lib.features(clip, pixels, grid)  # (B, D + G*G*C)
            img = feats[:, : clip.model_cfg["embed_dim"]]
            txt = model.encode_text(tokens, normalize=True)
            scale = model.logit_scale.exp()
        with precision.autocast("fp32", par.device):  # the loss itself outside autocast
            if negative is None:
                loss = loss_fn(img.float(), txt.float(), scale.float())
            else:
                loss = hard_negative_loss(img.float(), txt.float(), scale.float())
        if captioning is None and scene is None:
            return loss
        out = {"loss": loss, "contrastive": loss}
        if captioning is not None:
            d = captioning.decoder
            d.train()
            ids, mask = d.pad(d.tokenize([longest[idx[i]] for i in mine], captioning.max_tokens))
            out["caption"] = d.loss(feats, ids.to(par.device), mask.to(par.device))
            out["loss"] = out["loss"] + captioning.weight * out["caption"]
        if scene is not None:
            out["scene"] = scene.loss(feats, [idx[i] for i in mine])
            out["loss"] = out["loss"] + scene.weight * out["scene"]
        return out

    evaluation = None
    if heldout is not None:
        held = [t.to(par.device) if torch.is_tensor(t) else t for t in heldout]
        evaluation = Evaluation(lambda step: retrieval_recall(clip, *held), config.eval_every)
    result = fit(named, step_loss, config, seed=config.seed,
                 compute=config.precision, par=par, checkpoints=checkpoints,
                 evaluation=evaluation, log_step=log, desc=desc)  # fmt: skip
    model.eval().to("cpu")
    if captioning is not None:
        captioning.decoder.eval().to("cpu")
    if scene is not None:
        scene.head.to("cpu")
    return result.metrics

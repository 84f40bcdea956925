"""Contrastive training of a CLIP on image-caption pairs (in memory, CPU- or GPU-sized).

The images of the built-in world are tiny, so they are held as one uint8 tensor and
normalised per batch; each step draws a batch without replacement within an epoch
and one of each image's captions at random, all from one seeded generator.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip import ClipLoss
from tqdm import tqdm

from recaption import precision
from recaption.models.clip import Clip
from recaption.models.schedule import OptimConfig, warmup_cosine
from recaption.parallel import Parallel


@dataclass(frozen=True)
class ClipTrainConfig(OptimConfig):
    # No defaults: the stages pass every field from their params (clip.train,
    # evaluate.clip), the one place the numbers live. Warm-up matters here: contrastive
    # training from scratch collapses without it.
    eval_every: int
    seed: int
    precision: str  # resolved: fp32 | bf16 | fp16 (recaption.precision)


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


def train_clip(
    clip: Clip,
    images: torch.Tensor,
    captions: Sequence[Sequence[str]],
    config: ClipTrainConfig,
    heldout: tuple[torch.Tensor, Sequence[str]] | None = None,
    log: Callable[[int, dict], None] = lambda step, metrics: None,
    par: Parallel | None = None,
    desc: str = "clip",
    negative: Callable[[str, random.Random], str | None] | None = None,
) -> dict:
    """Train `clip` in place.

    Args:
        images: uint8 (N, 3, H, W) at the model's image size.
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
    Returns:
        The last logged metrics.
    """
    par = par or Parallel()
    gen = torch.Generator().manual_seed(config.seed)
    model = clip.model.to(par.device)
    forward = par.wrap(model)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = precision.grad_scaler(config.precision, par.device)
    loss_fn = ClipLoss()
    if negative is not None and par.world > 1:
        raise ValueError("hard negatives are implemented for one process only")
    neg_rng = random.Random(config.seed)
    if par.world > 1:
        loss_fn = ClipLoss(gather_with_grad=True, rank=par.rank, world_size=par.world)
    order, cursor, metrics = torch.randperm(len(images), generator=gen), 0, {}
    batch_size = min(config.batch_size, len(images))
    steps = tqdm(range(config.steps), desc=desc, unit="step", mininterval=2,
                 disable=not par.is_main)  # fmt: skip
    for step in steps:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(images), generator=gen), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        picks = torch.randint(0, 1 << 30, (batch_size,), generator=gen).tolist()
        texts = [
            captions[i][p % len(captions[i])] for i, p in zip(idx.tolist(), picks, strict=True)
        ]
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, config.lr, config.warmup_steps, config.steps)
        model.train()
        mine = par.share(range(batch_size), "clip batch_size")
        pixels = clip.normalise(images[idx[mine]].to(par.device))
        mine_texts = [texts[i] for i in mine]
        negs = [n for t in mine_texts if negative and (n := negative(t, neg_rng))]
        tokens = clip.tokenizer(mine_texts + negs).to(par.device)
        with precision.autocast(config.precision, par.device):
            img_feat, txt_feat, scale = forward(pixels, tokens)
        if negative is None:
            loss = loss_fn(img_feat.float(), txt_feat.float(), scale.float())
        else:
            loss = hard_negative_loss(img_feat.float(), txt_feat.float(), scale.float())
        precision.backward_step(loss, opt, list(model.parameters()), config.grad_clip, scaler)
        metrics = {"loss": par.mean(loss.item())}
        last = step + 1 == config.steps
        if heldout is not None and ((step + 1) % config.eval_every == 0 or last):
            metrics.update(retrieval_recall(clip, *(t.to(par.device) if torch.is_tensor(t) else t
                                                    for t in heldout)))  # fmt: skip
        if par.is_main:
            log(step, metrics)
    model.eval().to("cpu")
    return metrics

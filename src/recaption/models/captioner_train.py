"""One training routine for every captioner stage: pretraining and both tunings.

The stages differ only in their data and their `CaptionTrainConfig`; the loop is
the same: seeded shuffles, linear warm-up then cosine decay, autocast to the
resolved precision (recaption.precision), validation loss every `eval_every` steps
with early stopping, and the best weights restored at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from recaption import precision
from recaption.models.captioner import Captioner
from recaption.models.schedule import OptimConfig, warmup_cosine
from recaption.parallel import Parallel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionTrainConfig(OptimConfig):
    train_lm: bool  # False: only the mapper learns (the LM's own weights stay frozen)
    eval_every: int
    patience: int  # evaluations without improvement before stopping
    max_tokens: int
    precision: str  # resolved: fp32 | bf16 | fp16 (recaption.precision)
    seed: int


class _Batches:
    """Endless seeded shuffles of (features, token ids); each batch padded to its own width."""

    def __init__(self, features: torch.Tensor, ids: list[list[int]], size: int, seed: int):
        self.features, self.ids, self.size = features, ids, min(size, len(ids))
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def next(self) -> tuple[torch.Tensor, list[list[int]]]:
        if len(self.order) < self.size:
            self.order += torch.randperm(len(self.ids), generator=self.generator).tolist()
        picked, self.order = self.order[: self.size], self.order[self.size :]
        return self.features[picked], [self.ids[i] for i in picked]


@torch.inference_mode()
def mean_loss(
    model: Captioner, features: torch.Tensor, ids: list[list[int]], compute: str, batch: int = 256
) -> float:
    """Token-weighted mean caption loss over a whole set, in the resolved precision `compute`."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        tokens, mask = (t.to(device) for t in model.pad(chunk))
        with precision.autocast(compute, device):
            loss = model.loss(features[start : start + batch].to(device), tokens, mask)
        n = int(mask.sum())
        total, count = total + float(loss) * n, count + n
    return total / max(count, 1)


class _CaptionLoss(torch.nn.Module):
    """A captioner's loss as its forward (what DDP wraps)."""

    def __init__(self, model: Captioner):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor):
        return self.model.loss(features, tokens, mask)


def _trainable(model: Captioner, train_lm: bool) -> list[torch.nn.Parameter]:
    for p in model.lm.parameters():
        p.requires_grad_(train_lm)
    return [p for p in model.parameters() if p.requires_grad]


def train_captioner(
    model: Captioner,
    train: tuple[torch.Tensor, Sequence[str]],
    val: tuple[torch.Tensor, Sequence[str]],
    config: CaptionTrainConfig,
    log_step: Callable[[int, dict], None] | None = None,
    par: Parallel | None = None,
) -> dict:
    """Train `model` in place on (features, captions) pairs; return the run's figures.

    Args:
        train: features (N, F) float and N captions.
        val: the validation pairs early stopping watches.
        log_step: called as log_step(step, metrics) every `eval_every` steps (main
            process only).
        par: data-parallel training (see recaption.parallel): every process draws the
            step's whole batch and trains on its slice; each computes the same
            validation loss, so all stop at the same step.

    Returns:
        {"steps": steps run, "best_step", "val_loss" (best), "train_loss" (last window),
        "stopped_early"}; with `steps == 0`, only the validation loss of the model as given.
    """
    torch.manual_seed(config.seed)
    par = par or Parallel()
    model.to(par.device)
    train_ids = model.tokenize(train[1], config.max_tokens)
    val_ids = model.tokenize(val[1], config.max_tokens)
    best = {"val_loss": mean_loss(model, val[0], val_ids, config.precision), "best_step": 0}
    if config.steps == 0:
        return {"steps": 0, **best, "train_loss": None, "stopped_early": False}
    params = _trainable(model, config.train_lm)
    step_loss = par.wrap(_CaptionLoss(model))
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scaler = precision.grad_scaler(config.precision, par.device)
    batches = _Batches(train[0], train_ids, config.batch_size, config.seed)
    best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    window: list[float] = []
    stale, step = 0, 0
    bar = tqdm(range(config.steps), desc="captioner", unit="step", mininterval=2,
               disable=not par.is_main)  # fmt: skip
    for step in bar:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, config.lr, config.warmup_steps, config.steps)
        features, chunk = batches.next()
        mine = par.share(range(len(chunk)), "captioner batch_size")
        tokens, mask = (t.to(par.device) for t in model.pad([chunk[i] for i in mine]))
        with precision.autocast(config.precision, par.device):
            loss = step_loss(features[mine].to(par.device), tokens, mask)
        precision.backward_step(loss, optimizer, params, config.grad_clip, scaler)
        window = [*window[-49:], par.mean(loss.item())]
        bar.set_postfix(loss=f"{window[-1]:.3f}", refresh=False)
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            val_loss = mean_loss(model, val[0], val_ids, config.precision)
            train_loss = sum(window) / len(window)
            if log_step is not None and par.is_main:
                log_step(step + 1, {"train_loss": train_loss, "val_loss": val_loss})
            if val_loss < best["val_loss"]:
                best = {"val_loss": val_loss, "best_step": step + 1}
                best_state = {
                    n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
                }
                stale = 0
            else:
                stale += 1
                if stale >= config.patience:
                    log.info(
                        "early stop at step %d: no better val loss since step %d",
                        step + 1,
                        best["best_step"],
                    )
                    break
    bar.close()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in best_state:
                p.copy_(best_state[name])
    model.to("cpu")
    return {
        "steps": step + 1,
        **best,
        "train_loss": sum(window) / len(window),
        "stopped_early": step + 1 < config.steps,
    }

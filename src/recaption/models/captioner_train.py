"""One training routine for every captioner stage: pretraining and both tunings.

The stages differ only in their data and their `CaptionTrainConfig`; the loop is
the one every model trains with (recaption.models.training): batches from seeded
per-epoch shuffles, warm-up then cosine decay, autocast to the resolved precision and
a validation loss every `eval_every` steps. With `keep: best` the run stops early and
ends on the weights of lowest validation loss; with `keep: last` it runs its schedule
out and keeps the last weights. On a few hundred descriptive pairs the teacher-forced
loss rises while greedy captions keep improving (reports/benchmarks.md, "The
descriptive tuning"), so stage 2 keeps the last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from recaption import precision
from recaption.models.captioner import Captioner
from recaption.models.schedule import OptimConfig
from recaption.models.training import Checkpoints, Evaluation, LogStep, Micro, epoch_batch, fit
from recaption.parallel import Parallel
from recaption.streaming import Stream


@dataclass(frozen=True)
class CaptionTrainConfig(OptimConfig):
    train_lm: bool  # False: only the mapper (or projector) learns; the LM stays frozen
    eval_every: int
    keep: str  # best: the lowest validation loss (early stopping) | last: the schedule's end
    patience: int  # keep best: evaluations without improvement before stopping
    max_tokens: int
    precision: str  # resolved: fp32 | bf16 | fp16 (recaption.precision)
    seed: int


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


def train_captioner(
    model: Captioner,
    train: tuple[torch.Tensor | Stream, Sequence[str]],
    val: tuple[torch.Tensor, Sequence[str]],
    config: CaptionTrainConfig,
    log_step: LogStep | None = None,
    par: Parallel | None = None,
    checkpoints: Checkpoints | None = None,
) -> dict:
    """Train `model` in place on (features, captions) pairs; return the run's figures.

    Args:
        train: features (N, F) float and N captions; or a stream of the N pairs' features
            (`streaming.FeatureStream`, training index i: caption i), whose order the
            batches then follow.
        val: the validation pairs whose loss is logged (and, with `keep: best`, watched).
        log_step: called as log_step(step, metrics) every `eval_every` steps (main
            process only).
        par: data-parallel training (see recaption.parallel): every process draws the
            step's whole batch and trains on its slice; each computes the same
            validation loss, so all stop at the same step.
        checkpoints: where a killed run resumes from (see recaption.models.training).

    Returns:
        {"steps": steps run, "kept_step" (whose weights the model ends with), "val_loss"
        (theirs), "train_loss" (last window), "stopped_early"}; with `steps == 0`, the
        validation loss of the model as given.
    """
    par = par or Parallel()
    model.to(par.device)
    train_ids = model.tokenize(train[1], config.max_tokens)
    val_ids = model.tokenize(val[1], config.max_tokens)
    if config.steps == 0:
        val_loss = mean_loss(model, val[0], val_ids, config.precision)
        return {"steps": 0, "val_loss": val_loss, "kept_step": 0, "train_loss": None,
                "stopped_early": False}  # fmt: skip
    named = model.trainable(config.train_lm)
    step_loss = par.wrap(_CaptionLoss(model))

    def loss_at(step: int, gen: torch.Generator, micro: Micro) -> torch.Tensor:
        model.train()  # the validation leaves it in eval mode
        if isinstance(train[0], Stream):
            idx, (features,) = train[0].batch(step)
        else:
            idx = epoch_batch(len(train_ids), config.batch_size, step, config.seed)
            features = train[0][idx]
        positions = micro.take(par.share(range(len(idx)), "captioner batch_size"))
        mine = [idx[i] for i in positions]
        tokens, mask = (t.to(par.device) for t in model.pad([train_ids[i] for i in mine]))
        return step_loss(features[positions].to(par.device), tokens, mask)

    def validate(step: int) -> dict:
        return {"val_loss": mean_loss(model, val[0], val_ids, config.precision)}

    if config.keep == "best":
        evaluation = Evaluation(validate, config.eval_every, "val_loss", config.patience)
    else:
        evaluation = Evaluation(validate, config.eval_every)
    result = fit(named, loss_at, config, seed=config.seed, compute=config.precision, par=par,
                 checkpoints=checkpoints, evaluation=evaluation, log_step=log_step,
                 log_every=config.eval_every, desc="captioner")  # fmt: skip
    model.to("cpu")
    kept = result.best or {"step": result.steps, "value": result.metrics["val_loss"]}
    return {
        "steps": result.steps,
        "val_loss": kept["value"],
        "kept_step": kept["step"],
        "train_loss": result.metrics["loss"],
        "stopped_early": result.steps < config.steps,
    }

"""One training loop for every model: AdamW, warm-up then cosine, autocast, clipping, EMA,
a windowed loss, checkpoints that resume after a kill, data-parallel.

A model brings its trainable parameters and a `step_loss(step, gen, micro)`: the loss of
step `step` on this process's slice of the step's batch (`micro.take` of it: the whole
slice, or one of `grad_accumulation` micro-batches), every random choice drawn from `gen`
(seeded by (seed, step), afresh for each micro-batch, so each draws what the whole batch
would and keeps its rows' share) or from the global RNG (dropout), which the loop reseeds
each step. Step s is then a function of the weights and s alone, so a run resumed from a
checkpoint at step s continues exactly as the uninterrupted run would, with no RNG state
to save.

With micro-batches the step's gradient is the mean of theirs: the whole batch's, up to
float rounding, for a loss that is a mean over rows; for a mean over tokens it weighs each
micro-batch alike, as data-parallel processes already are; BatchNorm sees micro-batch
statistics. The schedule, clipping, EMA, logging and checkpoints stay per optimizer step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from tqdm import tqdm

from recaption import precision
from recaption.models.run_checkpoint import read_state, resume, save_checkpoint
from recaption.models.schedule import OptimConfig, warmup_cosine
from recaption.parallel import Parallel

log = logging.getLogger(__name__)

WINDOW = 50  # steps the logged losses average over
_DROPOUT = 1 << 40  # the global RNG's seed offset from the step generator's
LogStep = Callable[[int, dict], None]
T = TypeVar("T")


@dataclass(frozen=True)
class Micro:
    """Which of a step's `count` micro-batches a `step_loss` call computes."""

    index: int = 0
    count: int = 1

    def take(self, rows: Sequence[T]) -> list[T]:
        """This micro-batch's equal, contiguous share of `rows` (a process's slice)."""
        if len(rows) % self.count:
            raise ValueError(
                f"{len(rows)} rows do not split into {self.count} equal micro-batches: make "
                "the batch size a multiple of grad_accumulation (times the processes)"
            )
        size = len(rows) // self.count
        return list(rows[self.index * size : (self.index + 1) * size])


StepLoss = Callable[[int, torch.Generator, Micro], torch.Tensor | dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Checkpoints:
    """Where a run keeps its checkpoint, and every how many steps it rewrites it (0: never)."""

    folder: Path
    every: int


@dataclass(frozen=True)
class Evaluation:
    """Metrics computed every `every` steps and at the last (`run(step)`: held-out recall,
    a validation loss), logged with the loss; every process runs it, so all stop together.

    With `best`, the weights where that metric was lowest (the starting weights included)
    are restored at the end; with `patience` too, the run stops after that many
    evaluations without a new lowest.
    """

    run: Callable[[int], dict]
    every: int
    best: str | None = None
    patience: int = 0


@dataclass(frozen=True)
class Fit:
    """What a run did: steps trained to, where it resumed, its last logged metrics."""

    steps: int
    resumed_from: int
    metrics: dict
    seconds: float  # this process's time in the loop (not counting what a resume skipped)
    best: dict | None = None  # with Evaluation.best: {"step", "value"} of the weights kept


def step_seed(seed: int, step: int) -> int:
    """The seed of step `step`'s generator."""
    return seed * 1_000_003 + step


def steps_per_epoch(n: int, batch_size: int) -> int:
    """How many batches of `batch_size` (at most n) one epoch over n rows takes."""
    return max(1, n // min(batch_size, n))


def epoch_of(n: int, batch_size: int, step: int) -> int:
    """The epoch step `step` falls in (what a per-epoch caption draw is keyed by)."""
    return step // steps_per_epoch(n, batch_size)


def epoch_batch(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The indices of step `step`'s batch: slices of a permutation of range(n) seeded by
    (seed, epoch), so any step's batch is known without drawing the ones before."""
    size = min(batch_size, n)
    epoch, index = divmod(step, steps_per_epoch(n, batch_size))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return order[index * size : (index + 1) * size].tolist()


def fit(
    named: dict[str, torch.nn.Parameter],
    step_loss: StepLoss,
    config: OptimConfig,
    *,
    seed: int,
    compute: str = "fp32",
    par: Parallel | None = None,
    ema_decay: float | None = None,
    checkpoints: Checkpoints | None = None,
    buffers: dict[str, torch.Tensor] | None = None,
    evaluation: Evaluation | None = None,
    log_step: LogStep | None = None,
    log_every: int = WINDOW,
    desc: str = "train",
) -> Fit:
    """Train `named` for `config.steps` steps of `step_loss`; the weights end in place (the
    EMA's, with `ema_decay`).

    Args:
        step_loss: (step, generator, micro) -> the loss of `micro.take` of the step's
            rows, or a dict of scalars whose "loss" is trained on; called
            `config.grad_accumulation` times a step; every entry is averaged over the
            micro-batches and the last WINDOW steps, and logged every `log_every` steps
            and at the last.
        config: the optimiser's settings; all of it (its subclass's model fields too)
            fingerprints a checkpoint, so one written with other settings is ignored.
            `config.batch_size` must be a multiple of `config.grad_accumulation`.
        compute: the resolved precision (see recaption.precision) the loss runs in.
        par: data-parallel training: `step_loss` computes its process's slice (through a
            module `par.wrap` wrapped); the main process alone logs and checkpoints.
        buffers: tensors that change in training without being trained (BatchNorm
            statistics), kept in checkpoints with the weights.
        log_step: called as log_step(step, metrics) (main process only); a resumed run
            first replays what the interrupted one logged.
    """
    par = par or Parallel()
    k = config.grad_accumulation
    if k < 1 or config.batch_size % (k * par.world):
        raise ValueError(
            f"{desc}: batch_size {config.batch_size} does not split into grad_accumulation "
            f"{k} equal micro-batches on each of {par.world} process(es)"
        )
    run = _Run(named, config, seed, compute, par, ema_decay, evaluation)
    saved = {**named, **(buffers or {})}  # what a checkpoint holds besides the optimizer's
    if checkpoints:
        run.restore(checkpoints.folder, saved)
    run.judge_start()
    if log_step is not None and par.is_main:
        for step, metrics in run.logged:
            log_step(step, metrics)
    bar = tqdm(total=config.steps, initial=run.start, desc=desc, unit="step", mininterval=2,
               disable=not par.is_main)  # fmt: skip
    tick, done = time.perf_counter(), run.start
    for step in range(run.start, run.start if run.exhausted() else config.steps):
        run.train_step(step, step_loss)
        bar.update()
        done = step + 1
        metrics = run.metrics_at(done, log_every)
        if metrics:
            run.logged.append((done, metrics))
            if log_step is not None and par.is_main:
                log_step(done, metrics)
        stop = run.judge(done, metrics)
        if checkpoints and checkpoints.every and done % checkpoints.every == 0:
            if par.is_main:
                run.save(checkpoints.folder, done, saved)
            par.wait()
        if stop:
            break
    bar.close()
    return run.finish(done, time.perf_counter() - tick)


class _Run:
    """A run's state: optimizer, scaler, EMA, loss windows and what was logged."""

    def __init__(self, named, config, seed, compute, par, ema_decay, evaluation):
        self.named, self.config, self.seed, self.compute, self.par = (
            named, config, seed, compute, par
        )  # fmt: skip
        self.params = list(named.values())
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, weight_decay=config.weight_decay
        )
        self.scaler = precision.grad_scaler(compute, par.device)
        self.ema = EMA(named, ema_decay) if ema_decay is not None else None
        self.evaluation = evaluation
        self.start = 0
        self.window: dict[str, list[float]] = {}
        self.logged: list[tuple[int, dict]] = []
        self.best: dict | None = None  # {"step", "value", "stale"} with Evaluation.best
        self.best_weights: dict[str, torch.Tensor] = {}
        if evaluation is not None and evaluation.best:
            self.best_weights = {n: p.detach().clone() for n, p in named.items()}

    def restore(self, folder: Path, saved: dict[str, torch.Tensor]) -> None:
        """Continue from the checkpoint in `folder`, if one was written for this config."""
        self.start, window, self.logged = resume(
            folder, self.config, saved, self.ema, self.optimizer, self.best_weights
        )
        self.window = window or {}
        if self.start:
            meta = read_state(folder, self.config)
            self.best = meta.get("best")
            if meta.get("scaler"):  # fp16's loss scale
                self.scaler.load_state_dict(meta["scaler"])

    def save(self, folder: Path, step: int, saved: dict[str, torch.Tensor]) -> None:
        history = {"window": self.window, "logged": self.logged, "best": self.best,
                   "scaler": self.scaler.state_dict()}  # fmt: skip
        save_checkpoint(folder, self.config, step, saved, self.ema, self.optimizer, history,
                        self.best_weights)  # fmt: skip

    def judge_start(self) -> None:
        """A fresh run's starting weights are the first best (a tuning may only worsen)."""
        ev = self.evaluation
        if self.best_weights and self.best is None:
            self.best = {"step": self.start, "value": ev.run(self.start)[ev.best], "stale": 0}

    def exhausted(self) -> bool:
        """Did the run stop early before the checkpoint it resumed from was written?"""
        ev = self.evaluation
        return bool(self.best and ev.patience and self.best["stale"] >= ev.patience)

    def judge(self, done: int, metrics: dict) -> bool:
        """Keep the weights if step `done` evaluated best yet; True: stop early."""
        ev = self.evaluation
        if not self.best_weights or ev.best not in metrics:
            return False
        if metrics[ev.best] < self.best["value"]:
            self.best = {"step": done, "value": metrics[ev.best], "stale": 0}
            for n, p in self.named.items():
                self.best_weights[n].copy_(p.detach())
            return False
        self.best["stale"] += 1
        if not self.exhausted():
            return False
        log.info("early stop at step %d: no lower %s since step %d", done, ev.best,
                 self.best["step"])  # fmt: skip
        return True

    def finish(self, done: int, seconds: float) -> Fit:
        """Load the weights the run ends with (the EMA's, or the best evaluated)."""
        if self.ema is not None:
            self.ema.copy_to(self.named)
        best = None
        if self.best_weights:
            with torch.no_grad():
                for n, p in self.named.items():
                    p.copy_(self.best_weights[n])
            best = {"step": self.best["step"], "value": self.best["value"]}
        last = self.logged[-1][1] if self.logged else {}
        return Fit(done, self.start, last, seconds, best)

    def train_step(self, step: int, step_loss: StepLoss) -> None:
        """One optimizer step at the schedule's rate; the losses join their windows."""
        config = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = warmup_cosine(step, config.lr, config.warmup_steps, config.steps)
        k = config.grad_accumulation
        self.optimizer.zero_grad(set_to_none=True)
        torch.manual_seed(step_seed(self.seed, step) + _DROPOUT)
        values: dict[str, float] = {}
        for index in range(k):
            gen = torch.Generator().manual_seed(step_seed(self.seed, step))
            with precision.autocast(self.compute, self.par.device):
                losses = step_loss(step, gen, Micro(index, k))
            losses = losses if isinstance(losses, dict) else {"loss": losses}
            # The backward frees this micro-batch's activations before the next one's.
            loss = losses["loss"] if k == 1 else losses["loss"] / k
            self.scaler.scale(loss).backward()
            for name, value in losses.items():
                values[name] = values.get(name, 0.0) + value.item()
        precision.clipped_step(self.optimizer, self.params, config.grad_clip, self.scaler)
        if self.ema is not None:
            self.ema.update(self.named, step)
        for name, value in values.items():
            recent = self.window.get(name, [])[-(WINDOW - 1) :]
            self.window[name] = [*recent, self.par.mean(value if k == 1 else value / k)]

    def metrics_at(self, done: int, log_every: int) -> dict:
        """What step `done` logs: the windows' means, and the evaluation when it is due."""
        last = done == self.config.steps
        metrics = {}
        if done % log_every == 0 or last:
            metrics = {name: sum(values) / len(values) for name, values in self.window.items()}
        ev = self.evaluation
        if ev is not None and (done % ev.every == 0 or last):
            metrics.update(ev.run(done))
        # In name order, as a checkpoint's JSON keeps them: a resumed run logs them alike.
        return dict(sorted(metrics.items()))


class EMA:
    """An exponential moving average of a module's trainable weights, with a warm-up.

    Update s (0-based) decays by min(decay, (1 + s) / (10 + s)), as diffusers' EMAModel
    does: a fixed decay from the first step would keep decay**steps of the random
    initialisation in the average (13.5 % after 400 steps at 0.995, enough to make a
    short run's saved weights draw noise); with the warm-up the initialisation's share
    after s updates is the product of the early decays, below 1e-9 by update 40.
    """

    def __init__(self, named: dict[str, torch.nn.Parameter], decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in named.items()}

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, named: dict[str, torch.nn.Parameter], step: int) -> None:
        weight = 1 - self.decay_at(step)
        for n, p in named.items():
            self.shadow[n].lerp_(p.detach(), weight)

    @torch.no_grad()
    def copy_to(self, named: dict[str, torch.nn.Parameter]) -> None:
        for n, p in named.items():
            p.copy_(self.shadow[n])

"""Training the generator: the denoising loss and caption dropout, trained through the
shared loop (`recaption.models.training.fit`: EMA, checkpoints that resume).

Every random choice of step s (the epoch's image order, the noise, the timesteps,
which captions are dropped) comes from generators seeded by (seed, epoch) and
(seed, s), so a run resumed from a checkpoint at step s continues exactly as the
uninterrupted run would have, with no RNG state to save.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from recaption.models import lora
from recaption.models.autoencoder import pooled_edges
from recaption.models.generator import GeneratorPipeline, choose_attention
from recaption.models.schedule import OptimConfig
from recaption.models.training import Checkpoints, Micro, epoch_batch, epoch_of, fit
from recaption.parallel import Parallel
from recaption.streaming import Stream


@dataclass(frozen=True)
class GeneratorTrainConfig(OptimConfig):
    cond_dropout: float  # share of captions replaced by "" (what guidance contrasts with)
    ema_decay: float
    checkpoint_every: int  # steps between checkpoints (0: none)
    train_text_encoder: bool  # built-in: trained jointly; a pretrained one stays frozen
    precision: str  # resolved: fp32 | bf16 | fp16 (recaption.precision)
    seed: int
    log_every: int = 50
    snr_gamma: float = 0.0  # Min-SNR loss weighting (0: plain MSE)
    edge_weight: float = 0.0  # extra loss weight near outlines (see `edge_loss_weights`)


def _trainable(pipe: GeneratorPipeline, config: GeneratorTrainConfig) -> dict:
    pipe.text_encoder.requires_grad_(config.train_text_encoder)
    if pipe.vae is not None:
        pipe.vae.requires_grad_(False)
    # With LoRA (`recaption.models.lora`), only the adapters train; the base UNet is frozen.
    adapters = lora.adapted(pipe.unet)
    named = {f"unet.{n}": p for n, p in pipe.unet.named_parameters()
             if not adapters or lora.is_adapter(n)}  # fmt: skip
    if config.train_text_encoder:
        named.update({f"text_encoder.{n}": p for n, p in pipe.text_encoder.named_parameters()})
    return named


def to_model_space(pipe: GeneratorPipeline, images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> what the UNet denoises (see `GeneratorPipeline.to_model_space`).
    A float tensor is taken to be there already (cached latents)."""
    if images.is_floating_point():
        return images
    with torch.no_grad():
        return pipe.to_model_space(images.float() / 127.5 - 1)


def noise_schedule(pipe: GeneratorPipeline) -> DDPMScheduler:
    """The forward process the UNet is trained on, read from the pipeline's scheduler config
    (betas, timesteps, prediction type), as diffusers' training scripts read it.

    The sampler itself cannot serve: an Euler scheduler noises as x0 + sigma * noise, the
    unscaled input its `scale_model_input` undoes at sampling time, and only at the
    timesteps of its last `set_timesteps`. DDIM's noising is DDPM's, line for line.
    """
    return DDPMScheduler.from_config(pipe.scheduler.config)


class Denoiser(torch.nn.Module):
    """A pipeline's trainable parts behind one forward, the denoising loss (what DDP wraps)."""

    def __init__(
        self, pipe: GeneratorPipeline, snr_gamma: float = 0.0,
        text_states: Callable[[list[str]], torch.Tensor] | None = None,
    ):  # fmt: skip
        super().__init__()
        self.unet, self.text_encoder = pipe.unet, pipe.text_encoder
        self.snr_gamma = snr_gamma
        self.schedule = noise_schedule(pipe)
        self._pipe = [pipe]  # in a list: not registered twice as a submodule
        # A frozen text encoder's cached states (`recaption.text_states`), or None: encode.
        self.text_states = text_states

    def forward(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        captions: list[str],
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The denoising loss; `weights` (B, 1, h, w) weigh its positions (mean 1 kept)."""
        pipe = self._pipe[0]
        noisy = self.schedule.add_noise(x0, noise, t)
        if self.text_states is None:
            states = pipe.encode_prompts(captions)
        else:
            states = self.text_states(captions).to(x0.device)
        pred = self.unet(pipe.unet_input(noisy), t, encoder_hidden_states=states).sample
        target = training_target(self.schedule, x0, noise, t)
        if weights is None and not self.snr_gamma:
            return F.mse_loss(pred.float(), target)
        error = (pred.float() - target).pow(2)
        if weights is not None:
            error = error * weights / weights.mean()
        if not self.snr_gamma:
            return error.mean()
        per_sample = error.flatten(1).mean(1)
        return (per_sample * min_snr_weights(self.schedule, t, self.snr_gamma)).mean()


def edge_loss_weights(edges: torch.Tensor, edge_weight: float) -> torch.Tensor:
    """(N, 1, h, w) pooled edge maps (`autoencoder.pooled_edges` of the images, on the
    model space's grid) -> denoising-loss weights 1 + edge_weight x edge. An MSE over the
    whole image is spent on backgrounds, which cover most of it; these make the small
    objects' outlines count."""
    return 1 + edge_weight * edges


def training_target(
    schedule: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """What the UNet learns to predict, as the scheduler's `prediction_type` says: the
    noise ("epsilon"), the velocity sqrt(a) * noise - sqrt(1 - a) * x0 ("v_prediction",
    Stable Diffusion 2.x) or the clean sample ("sample")."""
    kind = schedule.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return schedule.get_velocity(x0, noise, t).float()
    if kind == "sample":
        return x0.float()
    raise ValueError(f"unknown prediction_type {kind!r}")


def min_snr_weights(schedule: DDPMScheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights of timesteps `t` (Hang et al. 2023): min(SNR, gamma)
    over SNR for a noise target, over SNR + 1 for a velocity and 1 (clamped) for the clean
    sample, so the low-noise steps, which are easy, do not dominate."""
    alphas = schedule.alphas_cumprod.to(t.device)[t].float()
    snr = alphas / (1 - alphas)
    clamped = torch.clamp(snr, max=gamma)
    kind = schedule.config.prediction_type
    return clamped / {"epsilon": snr, "v_prediction": snr + 1, "sample": 1}[kind]


def draw_noise(
    pipe: GeneratorPipeline, shape: torch.Size, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise of `shape`, a random timestep per row), from `gen`."""
    noise = torch.randn(shape, generator=gen)
    t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (shape[0],), generator=gen)
    return noise, t


def denoising_loss(
    pipe: GeneratorPipeline, x0: torch.Tensor, captions: list[str], gen: torch.Generator
) -> torch.Tensor:
    """MSE between the noise added at random timesteps and the UNet's prediction of it."""
    noise, t = draw_noise(pipe, x0.shape, gen)
    return Denoiser(pipe)(x0, t, noise, captions)


def train_generator(
    pipe: GeneratorPipeline,
    images: torch.Tensor | Stream,
    captions_for_epoch: Callable[[int], list[str]],
    config: GeneratorTrainConfig,
    checkpoint_dir: Path | None = None,
    log_step: Callable[[int, dict], None] | None = None,
    par: Parallel | None = None,
    edges: torch.Tensor | None = None,
    text_states: Callable[[list[str]], torch.Tensor] | None = None,
) -> dict:
    """Train `pipe` in place through the shared loop (`training.fit`), then load the EMA
    weights into it.

    Args:
        images: uint8 (N, 3, H, W), the training images, or float (N, C, h, w) model-space
            tensors (scaled VAE latents, cached by the caller), or a stream of either read
            from shards (`recaption.streaming`; a batch's order is then the stream's, and
            a latent stream's batches carry their own edge maps).
        captions_for_epoch: the N captions of an epoch (a per-epoch blend redraws them).
        checkpoint_dir: where a checkpoint is kept every `checkpoint_every` steps; a
            run finding one there resumes from it (the main process writes it).
        par: data-parallel training (see recaption.parallel): each process draws the
            step's whole batch and its noise, and trains on its slice.
        edges: (N, 1, h, w) the held training images' edge maps on the model space's
            grid (`autoencoder.pooled_edges`), which the edge-weighted loss reads
            (`config.edge_weight`); a stream's come with its batches.
        text_states: captions -> (B, T, d) states of a frozen text encoder, cached
            (`recaption.text_states.TextStates`); None: the text encoder runs every step.
    Returns:
        {"steps", "resumed_from", "loss" (last window, over every process), "images_per_s"}.
    """
    par = par or Parallel()
    pipe.to(par.device)
    choose_attention(pipe, config.precision, par.device)
    named = _trainable(pipe, config)
    if text_states is not None and config.train_text_encoder:
        raise ValueError("cached text states need a frozen text encoder")
    step_loss = _step_loss(pipe, images, captions_for_epoch, config, par, edges, text_states)
    pipe.unet.train()
    pipe.text_encoder.train(config.train_text_encoder)
    every = config.checkpoint_every
    result = fit(named, step_loss, config, seed=config.seed, compute=config.precision, par=par,
                 ema_decay=config.ema_decay, log_step=log_step, log_every=config.log_every,
                 checkpoints=Checkpoints(checkpoint_dir, every) if checkpoint_dir else None,
                 desc="train_generator")  # fmt: skip
    pipe.to("cpu")
    choose_attention(pipe, "fp32", "cpu")  # the pipeline leaves as it came: fused kernels
    pipe.unet.eval()
    pipe.text_encoder.eval()
    trained = (config.steps - result.resumed_from) * config.batch_size
    return {
        "steps": config.steps,
        "resumed_from": result.resumed_from,
        "loss": result.metrics.get("loss"),
        "images_per_s": trained / max(result.seconds, 1e-9),
    }


def _step_loss(pipe, images, captions_for_epoch, config, par, edges, text_states=None):
    """The loss of step s on this process's slice of its batch: the batch (from an
    epoch's seeded permutation, or the stream's), then (from the step's generator) which
    captions are dropped, the noise and the timesteps, drawn for the whole batch so every
    process draws alike."""
    denoiser = par.wrap(Denoiser(pipe, config.snr_gamma, text_states))
    size = pipe.unet.config.sample_size
    streamed = isinstance(images, Stream)
    if config.edge_weight and not streamed and edges is None:
        raise ValueError("edge_weight needs the edge maps of the training images (edges)")
    epoch: dict[int, list[str]] = {}  # the current epoch's captions, drawn once

    def step_loss(step: int, gen: torch.Generator, micro: Micro) -> torch.Tensor:
        e = epoch_of(len(images), config.batch_size, step)
        if e not in epoch:
            epoch.clear()
            epoch[e] = captions_for_epoch(e)
        idx, rows_of = _batch(images, step, config)
        dropped = torch.rand(len(idx), generator=gen) < config.cond_dropout
        texts = ["" if d else epoch[e][i] for i, d in zip(idx, dropped.tolist(), strict=True)]
        mine = micro.take(par.share(range(len(idx))))  # this process's rows of the batch
        batch, *carried = rows_of(mine)
        x0 = to_model_space(pipe, batch.to(par.device))
        noise, t = draw_noise(pipe, torch.Size([len(idx), *x0.shape[1:]]), gen)
        noise, t = noise[mine].to(par.device), t[mine].to(par.device)
        w = None
        if config.edge_weight:
            if not streamed:
                edge = edges[[idx[i] for i in mine]]
            else:  # a latent stream's own maps, or those of the streamed pixels
                edge = carried[0] if carried else pooled_edges(batch, size)
            w = edge_loss_weights(edge, config.edge_weight).to(par.device)
        return denoiser(x0, t, noise, [texts[i] for i in mine], w)

    return step_loss


def _batch(
    images: torch.Tensor | Stream, step: int, config: GeneratorTrainConfig
) -> tuple[list[int], Callable[[list[int]], tuple[torch.Tensor, ...]]]:
    """Step `step`'s training indices, and a function giving the tensors at some of its
    positions: rows of the held tensor, or of the batch the stream read (its images, or
    its latents and their edge maps)."""
    if isinstance(images, Stream):
        idx, batch = images.batch(step)
        return idx, lambda positions: tuple(x[positions] for x in batch)
    idx = epoch_batch(len(images), config.batch_size, step, config.seed)
    return idx, lambda positions: (images[[idx[p] for p in positions]],)

"""The autoencoder that puts the generator in latent space, as Stable Diffusion does.

Built in, a small diffusers `AutoencoderKL` trained here on the dataset's images: an
encoder that takes a 32 px image to an 8x8 grid of latents (factor 4) and a decoder
back. The generator's UNet then denoises latents, 16 times fewer positions than
pixels, so the same CPU time buys many more training steps. With a real pipeline
folder the pipeline's own VAE is used instead and nothing is trained.

Training is reconstruction (L1 on pixels in [-1, 1]) plus a small KL term that keeps
the latent distribution close to a unit Gaussian, as in the latent diffusion paper;
with `edge_weight` the L1 weighs pixels near an edge of the image more (see
`edge_weights`), so that small objects on a large background are not erased;
afterwards `scaling_factor` is set to 1 / std of the training latents, so the UNet
sees latents of unit variance whatever the autoencoder learnt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from recaption import io
from recaption.errors import UserError
from recaption.models.schedule import OptimConfig
from recaption.models.training import Checkpoints, LogStep, Micro, fit, steps_per_epoch
from recaption.parallel import Parallel

if TYPE_CHECKING:  # the stages that stream import it
    from recaption.streaming import Stream


class AutoencoderError(UserError):
    """An autoencoder config or folder that cannot be used; the message says why."""


@dataclass(frozen=True)
class AutoencoderTrainConfig(OptimConfig):
    kl_weight: float  # weight of the KL term against the per-pixel L1
    precision: str  # resolved: fp32 | bf16 | fp16
    seed: int
    edge_weight: float = 0.0  # extra L1 weight near the target's edges (0: plain L1)
    log_every: int = 50


def create_builtin(config_path: str | Path, image_size: int, seed: int) -> AutoencoderKL:
    """A fresh AutoencoderKL from an architecture JSON (diffusers' AutoencoderKL keys)."""
    path = Path(config_path)
    if not path.is_file():
        raise AutoencoderError(f"autoencoder.model: {config_path} does not exist")
    torch.manual_seed(seed)
    return AutoencoderKL(**json.loads(path.read_text()), sample_size=image_size)


def load(folder: str | Path) -> AutoencoderKL:
    """An autoencoder saved by `save_pretrained`; weights are read from safetensors only."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise AutoencoderError(f"{folder} is not an autoencoder folder: config.json is missing")
    return AutoencoderKL.from_pretrained(folder, use_safetensors=True)


def is_trained(folder: str | Path) -> bool:
    """Does `folder` hold a trained autoencoder (not only a `none` lineage)?"""
    return (Path(folder) / "config.json").is_file()


def fingerprint(folder: str | Path) -> str:
    """A trained autoencoder's identity: the hashes of its weights and config."""
    folder = Path(folder)
    files = [folder / "config.json", folder / "diffusion_pytorch_model.safetensors"]
    return io.sha256_bytes("".join(io.sha256_file(f) for f in files).encode())


def factor(vae: AutoencoderKL) -> int:
    """How many pixels one latent position spans, per side."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float pixels in [-1, 1]."""
    return images.float() / 127.5 - 1


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Float pixels in [-1, 1] -> uint8, clamped and rounded."""
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def edge_map(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) pixels in [-1, 1] -> (B, 1, H, W): each pixel's brightness's distance
    from its 3x3 neighbourhood mean, widened by one pixel (a 3x3 max): high on both sides
    of an object's outline and of a pattern's stripes, 0 on a flat background."""
    bright = x.mean(1, keepdim=True)
    local = F.avg_pool2d(bright, 3, stride=1, padding=1, count_include_pad=False)
    return F.max_pool2d((bright - local).abs(), 3, stride=1, padding=1)


def edge_weights(x: torch.Tensor, edge_weight: float) -> torch.Tensor:
    """(B, 3, H, W) pixels -> (B, 1, H, W) per-pixel loss weights, 1 + edge_weight * edge
    (`edge_map`). A plain L1 spends itself on the background, which covers most of every
    image, and erases small objects; these weights make their outlines count.
    """
    return 1 + edge_weight * edge_map(x)


def pooled_edges(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 (N, 1, size, size): each image's `edge_map` averaged
    down to a size x size grid (a model space's, where the generator's denoising loss is
    weighed 1 + edge_weight x this). Computed `chunk` images at a time; each image's map
    is its own, whatever else is in the chunk."""
    maps = [F.adaptive_avg_pool2d(edge_map(to_unit(c)), size) for c in images.split(chunk)]
    return torch.cat(maps) if maps else torch.empty(0, 1, size, size)


class _Reconstruction(torch.nn.Module):
    """The autoencoder's training loss as one forward (what DDP wraps)."""

    def __init__(self, vae: AutoencoderKL, config: AutoencoderTrainConfig):
        super().__init__()
        self.vae, self.config = vae, config

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: pixels (B, 3, H, W) in [-1, 1]; noise: (B, C, H/f, W/f), the posterior's draw.
        Returns the loss trained on and the plain L1 (what is reported)."""
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * noise
        recon = self.vae.decode(z).sample.float()
        error = (recon - x).abs()
        rec = error.mean()
        if self.config.edge_weight:  # no pooling per step when it is off
            weights = edge_weights(x, self.config.edge_weight)
            rec = (weights * error).mean() / weights.mean()  # on the plain L1's scale
        kl = posterior.kl().mean() / x[0].numel()  # per pixel, so the weight reads against L1
        return {"loss": rec + self.config.kl_weight * kl, "l1": error.mean()}


@torch.no_grad()
def encode(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> (N, C, H/f, W/f) latents (posterior means), unscaled."""
    vae.eval()
    chunks = [
        vae.encode(to_unit(images[i : i + batch_size])).latent_dist.mean
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.empty(0)


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """uint8 images through the encoder's mean and the decoder, back to uint8."""
    vae.eval()
    out = []
    for i in range(0, len(images), batch_size):
        latents = vae.encode(to_unit(images[i : i + batch_size])).latent_dist.mean
        out.append(to_uint8(vae.decode(latents).sample))
    return torch.cat(out)


def _first(images: torch.Tensor | Stream, n: int) -> torch.Tensor:
    """Up to `n` of the training images: the first held, or the first batches streamed."""
    if torch.is_tensor(images):
        return images[:n]
    steps = min(-(-n // images.batch_size), steps_per_epoch(len(images), images.batch_size))
    return torch.cat([images.batch(step)[1][0] for step in range(steps)])[:n]


def train_autoencoder(
    vae: AutoencoderKL,
    images: torch.Tensor | Stream,
    config: AutoencoderTrainConfig,
    log_step: LogStep | None = None,
    par: Parallel | None = None,
    checkpoints: Checkpoints | None = None,
) -> dict:
    """Train `vae` in place on uint8 (N, 3, H, W) images, held or streamed
    (`recaption.streaming.ImageStream`), then, back on the CPU, set its scaling factor.

    Step s's noise (and, for held images, its batch) comes from a generator seeded by
    (seed, s); a stream's batch is its step s. So the run is a function of its inputs and
    config, and one resumed from `checkpoints` ends where an uninterrupted one does.
    Returns:
        {"steps", "l1" (last window's mean L1, pixels in [-1, 1]), "scaling_factor",
        "images_per_s"}.
    """
    par = par or Parallel()
    vae.to(par.device).train()
    loss = par.wrap(_Reconstruction(vae, config))
    streamed = not torch.is_tensor(images)  # a recaption.streaming.ImageStream
    side = (images.size if streamed else images.shape[-1]) // factor(vae)
    latent = (vae.config.latent_channels, side, side)

    def step_loss(step: int, gen: torch.Generator, micro: Micro) -> dict[str, torch.Tensor]:
        if streamed:
            _, (batch,) = images.batch(step)
        else:
            batch = images[torch.randint(0, len(images), (config.batch_size,), generator=gen)]
        n = len(batch)  # a stream of fewer images than a batch gives them all
        noise = torch.randn((n, *latent), generator=gen)  # drawn on the CPU
        mine = micro.take(par.share(range(n), "autoencoder.batch_size"))
        x = to_unit(batch[list(mine)].to(par.device))
        return loss(x, noise[mine].to(par.device))

    named = {n: p for n, p in vae.named_parameters() if p.requires_grad}
    result = fit(named, step_loss, config, seed=config.seed, compute=config.precision, par=par,
                 checkpoints=checkpoints, log_step=log_step, log_every=config.log_every,
                 desc="train_autoencoder")  # fmt: skip
    vae.to("cpu")
    latents = encode(vae, _first(images, 2048))
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    trained = config.steps - result.resumed_from
    return {
        "steps": config.steps,
        "l1": result.metrics.get("l1"),
        "scaling_factor": vae.config.scaling_factor,
        "images_per_s": trained * config.batch_size / max(result.seconds, 1e-9),
    }

"""The text-to-image generator: a diffusers pipeline the recaptioned dataset trains.

`GeneratorPipeline` packages a `UNet2DConditionModel`, a scheduler (DDIM built in;
Euler or DPM-Solver can take its place, see `SCHEDULERS`), a text encoder and its
tokenizer (and optionally a VAE, for latent space) as a `DiffusionPipeline`, so
`save_pretrained` / `from_pretrained` work as for any diffusers pipeline. Sampling
uses classifier-free guidance: the empty caption is the unconditional input, which
caption dropout in training teaches. A Stable Diffusion folder loads and samples as
diffusers' `StableDiffusionPipeline` samples it.

Built in, the UNet works in pixel space at the dataset's image size and the text
encoder is a small transformers `CLIPTextModel` over a tokenizer trained on the
captions, both trained from scratch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerBase

from recaption import precision
from recaption.errors import UserError


class GeneratorError(UserError):
    """A generator folder or config that cannot be used; the message says why."""


# The samplers `generator.scheduler` names. Each is built from the pipeline's own scheduler
# config, so the noise schedule and the prediction type the UNet was trained on carry over.
SCHEDULERS = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "dpm": DPMSolverMultistepScheduler,
}


class GeneratorPipeline(DiffusionPipeline):
    """UNet + scheduler + text encoder + tokenizer (+ optional VAE), saved as one folder."""

    _optional_components = ["vae"]

    def __init__(
        self, unet, scheduler, text_encoder, tokenizer, vae=None, patch_size: int = 1,
        coord_channels: bool = False,
    ):  # fmt: skip
        super().__init__()
        self.register_modules(
            unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer, vae=vae
        )
        self.register_to_config(patch_size=patch_size, coord_channels=coord_channels)

    @property
    def coord_channels(self) -> bool:
        """Whether the UNet sees two extra input channels holding each position's (y, x)
        in [-1, 1]. A convolution cannot tell where it is, nor can the cross-attention
        queries it feeds; with the coordinates "at the top left" can find the top left."""
        return bool(self.config.get("coord_channels", False))

    def unet_input(self, sample: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) model-space sample -> the UNet's input (coordinates appended)."""
        if not self.coord_channels:
            return sample
        b, _, h, w = sample.shape
        ys = torch.linspace(-1, 1, h, device=sample.device, dtype=sample.dtype)
        xs = torch.linspace(-1, 1, w, device=sample.device, dtype=sample.dtype)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))  # (2, h, w)
        return torch.cat([sample, grid.expand(b, -1, -1, -1)], dim=1)

    @property
    def patch_size(self) -> int:
        """Without a VAE: the side of the pixel patches one UNet position holds (1: plain
        pixels). Space-to-depth is lossless and needs no training."""
        return self.config.get("patch_size", 1)

    @property
    def factor(self) -> int:
        """Pixels per model-space position, per side: the VAE's downsampling, or the patch."""
        if self.vae is None:
            return self.patch_size
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """Side of the images it draws and trains on."""
        return self.unet.config.sample_size * self.factor

    @property
    def max_tokens(self) -> int:
        return self.text_encoder.config.max_position_embeddings

    @property
    def fixed_length(self) -> int | None:
        """The length every prompt is padded to, or None: padded to the batch's longest.

        A pretrained tokenizer states its length (CLIP's 77, its text encoder's
        positions), and Stable Diffusion's UNet was trained on states padded to it, pad
        positions included. The built-in tokenizer states none (transformers' huge
        default), and the built-in generator trains on prompts padded to the longest.
        """
        length = self.tokenizer.model_max_length
        return length if length <= self.max_tokens else None

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, T, d) text-encoder states of the prompts: T is `fixed_length` (with no
        attention mask unless the encoder asks for one, as Stable Diffusion encodes), or
        the longest prompt's (masked)."""
        length = self.fixed_length
        tokens = self.tokenizer(
            list(prompts), padding="max_length" if length else True, truncation=True,
            max_length=length or self.max_tokens, return_tensors="pt",
        )  # fmt: skip
        device = self.text_encoder.device
        masked = not length or getattr(self.text_encoder.config, "use_attention_mask", False)
        mask = tokens.attention_mask.to(device) if masked else None
        return self.text_encoder(tokens.input_ids.to(device), attention_mask=mask).last_hidden_state

    def set_scheduler(self, name: str) -> None:
        """Sample with `name` (a key of `SCHEDULERS`), or, for "auto", with the scheduler
        the pipeline came with. Training does not depend on it (see
        `generator_train.noise_schedule`); the saved folder keeps it."""
        if name != "auto":
            self.scheduler = SCHEDULERS[name].from_config(self.scheduler.config)

    def to_model_space(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> what the UNet denoises: VAE latents (scaled), patches, or
        the pixels themselves."""
        if self.vae is not None:
            latents = self.vae.encode(pixels).latent_dist.mode()
            return latents * self.vae.config.scaling_factor
        return F.pixel_unshuffle(pixels, self.patch_size) if self.patch_size > 1 else pixels

    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Model space -> pixels in [-1, 1]: a VAE decodes, patches are put back in place."""
        if self.vae is not None:
            return self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return F.pixel_shuffle(latents, self.patch_size) if self.patch_size > 1 else latents

    @torch.no_grad()
    def __call__(
        self,
        prompts: str | Sequence[str],
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        num_images_per_prompt: int = 1,
        seed: int | Sequence[int] = 0,
    ) -> list[Image.Image]:
        """Generate images: one list, `num_images_per_prompt` per prompt, in prompt order.

        `seed` seeds the whole batch's noise, or, given one per image, each image's own
        (then an image does not depend on what else is in the batch).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        cond = self.encode_prompts(prompts)
        uncond = self.encode_prompts([""] * len(prompts))
        width = max(cond.shape[1], uncond.shape[1])
        states = torch.cat([_pad_to(uncond, width), _pad_to(cond, width)])  # (2B, T, d)
        size = self.unet.config.sample_size
        shape = (len(prompts), self.unet.config.out_channels, size, size)
        # Schedulers of the Euler kind start from wider noise and scale the UNet's input;
        # for DDIM both are the identity. Their starting sigma is the first of the steps
        # drawn, so the steps are set first (as StableDiffusionPipeline does).
        self.scheduler.set_timesteps(num_inference_steps, device=self.unet.device)
        latents = _initial_noise(shape, seed).to(self.unet.device) * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            doubled = self.scheduler.scale_model_input(torch.cat([latents, latents]), t)
            out = self.unet(self.unet_input(doubled), t, encoder_hidden_states=states).sample
            out_uncond, out_cond = out.chunk(2)  # noise, velocity or sample, as trained
            guided = out_uncond + guidance_scale * (out_cond - out_uncond)
            latents = self.scheduler.step(guided, t, latents).prev_sample
        pixels = self.to_images(latents).float().clamp(-1, 1)  # bf16 weights: round in fp32
        array = ((pixels + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in array]


def choose_attention(pipe: GeneratorPipeline, compute: str, device: str | torch.device) -> None:
    """Set the attention kernels of `pipe`'s UNet and text encoder for a run in `compute`
    (a resolved precision) on `device`.

    On a CPU under bf16 autocast, PyTorch's fused attention kernel is several times
    slower than the plain matmul-softmax one at these models' sizes (measured on a CPU
    with native bf16: a 16x16-latent UNet's training step 1.7x, an 8x8 one's 3.5x, the
    text encoder's 2.5x; `benchmarks/attention_kernels.py`), so the plain kernels are
    used there. Everywhere else, fp32 on a CPU included, the fused kernel is as fast
    or faster and stays. Both compute the same attention; the weights are untouched.
    """
    plain = torch.device(device).type == "cpu" and compute == "bf16"
    pipe.unet.set_attn_processor(AttnProcessor() if plain else AttnProcessor2_0())
    pipe.text_encoder.set_attn_implementation("eager" if plain else "sdpa")


def _initial_noise(shape: tuple[int, ...], seed: int | Sequence[int]) -> torch.Tensor:
    if isinstance(seed, int):
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    seeds = list(seed)
    if len(seeds) != shape[0]:
        raise ValueError(f"{len(seeds)} seeds for {shape[0]} images")
    return torch.stack(
        [torch.randn(shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds]
    )


def _pad_to(states: torch.Tensor, width: int) -> torch.Tensor:
    """Pad (B, T, d) states to (B, width, d) by repeating the last position."""
    if states.shape[1] == width:
        return states
    tail = states[:, -1:].expand(-1, width - states.shape[1], -1)
    return torch.cat([states, tail], dim=1)


def create_builtin(
    config_path: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    image_size: int,
    seed: int,
    vae: AutoencoderKL | None = None,
    text_encoder: CLIPTextModel | None = None,
) -> GeneratorPipeline:
    """A fresh pipeline from an architecture JSON (unet, text_encoder, scheduler; optional
    patch_size and coord_channels): in pixel space, in patches of patch_size^2 pixels
    (space-to-depth), or, given a trained `vae`, in its latent space (which takes the place
    of patches); with coord_channels the UNet also reads each position's coordinates.
    A given `text_encoder` (with its `tokenizer`: a pretrained CLIP's, see
    `recaption.models.clip_text`) takes the place of the JSON's fresh one."""
    path = Path(config_path)
    if not path.is_file():
        raise GeneratorError(f"generator.model: {config_path} does not exist")
    config = json.loads(path.read_text())
    torch.manual_seed(seed)
    text_encoder = text_encoder or CLIPTextModel(
        CLIPTextConfig(
            **config["text_encoder"],
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    patch = 1 if vae is not None else int(config.get("patch_size", 1))
    channels = 3 * patch * patch if vae is None else vae.config.latent_channels
    factor = patch if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)
    if image_size % factor:
        raise GeneratorError(
            f"image size {image_size} is not a multiple of the model space's factor {factor}"
        )
    coords = bool(config.get("coord_channels", False))
    unet = UNet2DConditionModel(
        **config["unet"],
        sample_size=image_size // factor,
        in_channels=channels + 2 * coords,
        out_channels=channels,
        cross_attention_dim=text_encoder.config.hidden_size,
    )
    scheduler = DDIMScheduler(**config["scheduler"])
    return GeneratorPipeline(unet, scheduler, text_encoder, tokenizer, vae, patch, coords)


def load(folder: str | Path, dtype: torch.dtype = torch.float32) -> GeneratorPipeline:
    """A pipeline saved by `save_pretrained`, its weights in `dtype` (for sampling only:
    `precision.weights_dtype`); weights are read from safetensors only."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise GeneratorError(f"{folder} is not a generator folder: model_index.json is missing")
    return GeneratorPipeline.from_pretrained(
        folder, use_safetensors=True, **precision.load_kwargs(dtype)
    )


def image_grid(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """Images side by side in a grid (as square as possible), 2 px apart."""
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / columns))
    w, h = images[0].size
    grid = Image.new("RGB", (columns * (w + 2) - 2, rows * (h + 2) - 2), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * (w + 2), (i // columns) * (h + 2)))
    return grid

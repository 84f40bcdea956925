"""Tiny stand-ins for real data and pretrained models, for the real-tiny profile.

`configs/profiles/real-tiny.yaml` points the pipeline at what `build` writes under
`data/raw/real-tiny/`: a folder of photograph-like JPEGs with a captions CSV (ground
truth, short and descriptive), an open_clip ViT saved as safetensors with its
architecture JSON, a GPT-2 saved with its own tokenizer, a Stable Diffusion folder
and a prompts file. Nothing is downloaded, so the real loading code runs offline.

    python tests/real_tiny.py [ROOT]    # writes ROOT/data/raw/real-tiny (ROOT: .)
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

ASSETS = Path("data/raw/real-tiny")  # relative to the project root, as the profile names it
IMAGE_SIZE = 64
NUM_IMAGES = 60
# A small world of photographed things, so the captions say something true of each image.
THINGS = ["ball", "box", "lamp", "cup", "stone"]
COLOURS = {"red": (200, 40, 40), "blue": (40, 70, 200), "green": (40, 160, 60),
           "yellow": (220, 200, 40), "black": (30, 30, 30)}  # fmt: skip
SCENES = {"beach": ((150, 200, 240), (225, 205, 150)), "field": ((120, 170, 230), (90, 150, 60)),
          "room": ((200, 190, 170), (130, 100, 80))}  # fmt: skip
WORDS = ["red", "blue", "green", "black", "on", "the", "left", "right"]
CLIP_ARCH = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 1, "width": 32, "head_width": 16,
                   "patch_size": 16},  # a 4x4 patch map: embed.grid 4 takes it as it is
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}  # fmt: skip
PROMPTS = ["a red ball on a beach", "a blue box in a field", "a lamp in a room"]


def photo(i: int, size: int = IMAGE_SIZE) -> tuple[Image.Image, dict[str, str]]:
    """A photograph-like image: a sky-to-ground gradient, one soft-edged, shaded object,
    blur and sensor noise (smooth, noisy pixels, as a JPEG of a photo has); and what is in it."""
    rng = np.random.default_rng(i)
    scene = list(SCENES)[i % len(SCENES)]
    thing, colour = THINGS[i % len(THINGS)], list(COLOURS)[(i // 3) % len(COLOURS)]
    sky, ground = (np.array(c, float) for c in SCENES[scene])
    t = np.clip((np.arange(size) / size - 0.45) * 4, 0, 1)[:, None, None]  # (H, 1, 1)
    pixels = np.broadcast_to(sky * (1 - t) + ground * t, (size, size, 3)).copy()
    img = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    x, y, r = rng.integers(size // 4, 3 * size // 4), rng.integers(size // 3, 2 * size // 3), 10
    box = [x - r, y - r, x + r, y + r]
    fill = COLOURS[colour]
    if thing in ("ball", "stone"):
        draw.ellipse(box, fill=fill)
    else:
        draw.rectangle(box, fill=fill)
    noisy = np.asarray(img.filter(ImageFilter.GaussianBlur(1.2)), float)
    noisy += rng.normal(0, 6, noisy.shape)
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return image, {"thing": thing, "colour": colour, "scene": scene}


def write_images(folder: Path, n: int = NUM_IMAGES) -> None:
    """`n` JPEGs and captions.csv: web-like ground truth, and short and descriptive
    references (for `annotate.source: column`)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        image, what = photo(i)
        name = f"photo{i:03d}.jpg"
        image.save(folder / name, quality=90)
        thing, colour, scene = what["thing"], what["colour"], what["scene"]
        rows.append({
            "file": name,
            "caption": f"IMG_{i:04d}" if i % 3 == 0 else f"my {thing}",  # alt-text-like
            "short": f"a {colour} {thing}",
            "descriptive": f"a {colour} {thing} in the middle of a {scene}, a soft photograph",
        })  # fmt: skip
    with open(folder / "captions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_clip(folder: Path) -> None:
    """A randomly initialised open_clip ViT: clip.json (its architecture) and
    clip.safetensors (its weights), as a user's local checkpoint would be."""
    from safetensors.torch import save_file

    from recaption.models import clip as clip_lib

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "clip.json").write_text(json.dumps(CLIP_ARCH, indent=2) + "\n")
    donor = clip_lib.create(str(folder / "clip.json"), None, seed=3)
    state = {k: v.contiguous() for k, v in donor.model.state_dict().items()}
    save_file(state, folder / "clip.safetensors")


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_lm(folder: Path, texts: list[str]) -> None:
    """A tiny GPT-2 with its own byte-level BPE tokenizer and a chat template, saved with
    save_pretrained (safetensors): the captioner's LM and an instruction LM for the
    upsampler. Its context holds the upsampler's instruction and a rewrite."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from recaption.models.tokenizer import train_tokenizer
    from recaption.models.upsampler import INSTRUCTION

    tokenizer = train_tokenizer([INSTRUCTION, *texts], 400)
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(1)
    lm = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_layer=1, n_head=2, n_embd=32, n_positions=256,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    ))  # fmt: skip
    lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def clip_tokenizer(folder: Path):
    """A real CLIPTokenizer over a tiny BPE: the letters, then merges that make each of
    the captions' words one token. Unknown text falls back to letters."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    merges = []
    for word in WORDS:
        piece = word[0]
        for i, c in enumerate(word[1:], 1):
            tail = c + "</w>" if i == len(word) - 1 else c  # "</w>" ends a word
            merges.append(f"{piece} {tail}")
            piece += tail
            vocab.append(piece)
    vocab, merges = list(dict.fromkeys(vocab)), list(dict.fromkeys(merges))  # "bl" twice
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77
    )


def write_sd_folder(folder: Path, image_size: int = 16) -> Path:
    """A tiny Stable Diffusion 2.x-style folder, saved by StableDiffusionPipeline itself:
    `image_size` px images through a VAE to 4 x image_size/2 x image_size/2 latents, a
    v-prediction UNet, an Euler scheduler and a 77-position CLIP text encoder."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = clip_tokenizer(folder.parent / f"{folder.name}-bpe")
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=8,
        sample_size=image_size,
    )  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=image_size // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=[16, 32], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=8,
        norm_num_groups=8, cross_attention_dim=32,
    )  # fmt: skip
    # Leading spacing, as an SD config that came from DDIM or PNDM carries: the starting
    # sigma then depends on the steps drawn.
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type="v_prediction", steps_offset=1, timestep_spacing="leading",
    )  # fmt: skip
    StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder)  # fmt: skip
    return folder


def build(root: Path) -> Path:
    """Write everything the real-tiny profile names under `root` (a project root)."""
    assets = root / ASSETS
    write_images(assets / "images")
    write_clip(assets)
    with open(assets / "images" / "captions.csv") as fh:
        texts = [row[c] for row in csv.DictReader(fh) for c in ("caption", "short", "descriptive")]
    write_lm(assets / "gpt2", texts)
    write_sd_folder(assets / "sd", IMAGE_SIZE)
    (assets / "prompts.csv").write_text("prompt\n" + "\n".join(PROMPTS) + "\n")
    return assets


if __name__ == "__main__":
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))

"""`recap generate`: draw a prompt with a trained generator and write PNGs."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from recaption.models import generator as gen_lib


def write_images(
    model: Path,
    prompt: str,
    n: int,
    seed: int,
    steps: int,
    guidance: float,
    out: Path,
    scale: int = 1,
    device: str = "cpu",
) -> list[Path]:
    """Draw `prompt` n times on `device`; write `out` (n == 1) or `<stem>-<i>.png` plus
    `<stem>-grid.png`. The noise is drawn on the CPU, so every device starts from the same.

    Returns the paths written.
    """
    pipe = gen_lib.load(model).to(device)
    images = pipe([prompt], num_inference_steps=steps, guidance_scale=guidance,
                  num_images_per_prompt=n, seed=seed)  # fmt: skip
    images = [_upscale(i, scale) for i in images]
    out.parent.mkdir(parents=True, exist_ok=True)
    if n == 1:
        images[0].save(out)
        return [out]
    written = []
    for i, image in enumerate(images):
        path = out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}")
        image.save(path)
        written.append(path)
    grid = out.with_name(f"{out.stem}-grid{out.suffix or '.png'}")
    gen_lib.image_grid(images).save(grid)
    return [*written, grid]


def upsample_prompt(upsampler: Path, prompt: str, device: str = "cpu") -> str:
    """`prompt` rewritten by a saved upsampler on `device`, decoded as the upsample stage
    decodes (seeded: the same prompt gives the same text); the prompt itself if it writes
    nothing."""
    from recaption.models import upsampler as up_lib

    model = up_lib.load(upsampler)
    model.lm.to(device)
    (rewritten,) = model.rewrite([prompt])
    return rewritten or prompt


def _upscale(image: Image.Image, scale: int) -> Image.Image:
    if scale == 1:
        return image
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)

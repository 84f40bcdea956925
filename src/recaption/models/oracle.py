"""The oracle detector: reads a built-in-world image back into a scene.

The evaluation of prompt following needs to know what a generated image shows.
In the synthetic world every training image comes from a known scene, so a small
convolutional network trained on fresh renders (never in the dataset) can read
an image back: for each of the 3x3 grid cells, what it holds (nothing, one of
the shapes, or a glyph) and in which colour, and the background. Its accuracy on
held-out renders is reported next to every score it gives.

The network sees the image resized so that each grid cell covers exactly a 3x3
patch of its last feature map; each cell's patch (flattened, so the layout of the
shape inside the cell is kept) goes through shared heads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from recaption.errors import UserError
from recaption.models.schedule import OptimConfig
from recaption.models.training import Checkpoints, LogStep, Micro, epoch_batch, fit
from recaption.parallel import Parallel
from recaption.world import BACKGROUNDS, COLOUR_NAMES, SHAPES, Scene

# What a grid cell can hold: index 0 is empty, then the shapes, then a glyph.
CONTENTS: tuple[str, ...] = ("empty", *SHAPES, "glyph")
GLYPH = len(CONTENTS) - 1
CELLS = 9
CONFIG_NAME = "oracle.json"
WEIGHTS_NAME = "oracle.safetensors"
# Cells per side of the world's grid, and feature-map positions per cell side.
_GRID, _PATCH = 3, 3


class OracleError(UserError):
    """An oracle folder that cannot be used."""


@dataclass(frozen=True)
class OracleConfig:
    """Architecture: input side (a multiple of 12) and conv widths."""

    input_size: int = 36
    widths: tuple[int, int, int] = (16, 32, 64)
    hidden: int = 256


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class Oracle(nn.Module):
    """uint8 images -> per-cell content and colour logits, and background logits."""

    def __init__(self, config: OracleConfig = OracleConfig()):
        super().__init__()
        if config.input_size % (4 * _GRID) != 0:
            raise OracleError(
                f"oracle input_size must be a multiple of 12, got {config.input_size}"
            )
        self.config = config
        w1, w2, w3 = config.widths
        self.features = nn.Sequential(
            _conv(3, w1), _conv(w1, w1), _conv(w1, w2, 2), _conv(w2, w2), _conv(w2, w3, 2),
            _conv(w3, w3),
        )  # fmt: skip
        patch = w3 * _PATCH * _PATCH
        self.cell = nn.Sequential(nn.Linear(patch, config.hidden), nn.ReLU())
        self.content = nn.Linear(config.hidden, len(CONTENTS))
        self.colour = nn.Linear(config.hidden, len(COLOUR_NAMES))
        self.background = nn.Linear(2 * w3, len(BACKGROUNDS))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: uint8 (B, 3, H, W). Returns logits: content (B, 9, C), colour (B, 9, 8),
        background (B, 6)."""
        x = images.float() / 127.5 - 1
        side = self.config.input_size
        if x.shape[-1] != side or x.shape[-2] != side:
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        f = self.features(x)  # (B, w3, 9, 9) for a 36 px input
        b, c, h, _ = f.shape
        k = h // _GRID
        cells = f.view(b, c, _GRID, k, _GRID, k).permute(0, 2, 4, 1, 3, 5)  # (B, 3, 3, c, k, k)
        cells = F.adaptive_avg_pool2d(cells.reshape(b * CELLS, c, k, k), _PATCH)
        hidden = self.cell(cells.reshape(b, CELLS, -1))  # (B, 9, hidden)
        pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3))], dim=1)  # (B, 2 * w3)
        return {
            "content": self.content(hidden),
            "colour": self.colour(hidden),
            "background": self.background(pooled),
        }


# ---- targets and decoded detections ------------------------------------------------------


def scene_targets(scene: Scene) -> dict[str, np.ndarray]:
    """Per-cell content and colour indices (colour -100 where there is no object: ignored by
    the loss) and the background index."""
    content = np.zeros(CELLS, np.int64)
    colour = np.full(CELLS, -100, np.int64)
    for obj in scene.objects:
        cell = obj.cell[0] * _GRID + obj.cell[1]
        content[cell] = CONTENTS.index(obj.shape)
        colour[cell] = COLOUR_NAMES.index(obj.colour)
    if scene.text is not None:
        content[scene.text.cell[0] * _GRID + scene.text.cell[1]] = GLYPH
    return {"content": content, "colour": colour, "background": BACKGROUNDS.index(scene.background)}


def stack_targets(scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
    targets = [scene_targets(s) for s in scenes]
    return {
        "content": torch.from_numpy(np.stack([t["content"] for t in targets])),
        "colour": torch.from_numpy(np.stack([t["colour"] for t in targets])),
        "background": torch.tensor([t["background"] for t in targets]),
    }


def scene_detection(scene: Scene) -> dict[str, Any]:
    """What a perfect oracle would report for `scene` (the form `detect` returns)."""
    return {
        "background": scene.background,
        "objects": [
            {"shape": o.shape, "colour": o.colour, "row": o.cell[0], "col": o.cell[1]}
            for o in scene.objects
        ],
        "glyph": None if scene.text is None else list(scene.text.cell),
    }


@torch.inference_mode()
def predict(oracle: Oracle, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Argmax content (N, 9), colour (N, 9) and background (N,) indices."""
    oracle.eval()
    out: dict[str, list[torch.Tensor]] = {"content": [], "colour": [], "background": []}
    for start in range(0, len(images), batch_size):
        logits = oracle(images[start : start + batch_size])
        for name in out:
            out[name].append(logits[name].argmax(-1))
    return {name: torch.cat(parts) for name, parts in out.items()}


def detections(pred: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Predictions as one scene-like dict per image (see `scene_detection`)."""
    out = []
    for content, colour, background in zip(
        pred["content"].tolist(), pred["colour"].tolist(), pred["background"].tolist(), strict=True
    ):
        objects, glyph = [], None
        for cell, (what, hue) in enumerate(zip(content, colour, strict=True)):
            row, col = divmod(cell, _GRID)
            if what == GLYPH:
                glyph = [row, col]
            elif what:
                objects.append(
                    {"shape": CONTENTS[what], "colour": COLOUR_NAMES[hue], "row": row, "col": col}
                )
        out.append({"background": BACKGROUNDS[background], "objects": objects, "glyph": glyph})
    return out


def accuracy(pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, float]:
    """Held-out accuracy per attribute.

    occupancy: each cell's empty / object / glyph; shape and colour: over cells that hold an
    object; position: the set of occupied cells of an image is exactly right; count: the
    number of objects of an image; background: per image; scene: everything of an image.
    """
    kind = lambda c: torch.where(c == 0, 0, torch.where(c == GLYPH, 2, 1))  # noqa: E731
    objects = (target["content"] > 0) & (target["content"] != GLYPH)
    cells_ok = pred["content"] == target["content"]
    colour_ok = (pred["colour"] == target["colour"]) | ~objects
    occupied = lambda c: (c > 0) & (c != GLYPH)  # noqa: E731
    return {
        "occupancy": (kind(pred["content"]) == kind(target["content"])).float().mean().item(),
        "shape": cells_ok[objects].float().mean().item(),
        "colour": (pred["colour"] == target["colour"])[objects].float().mean().item(),
        "position": (occupied(pred["content"]) == objects).all(1).float().mean().item(),
        "count": (occupied(pred["content"]).sum(1) == objects.sum(1)).float().mean().item(),
        "background": (pred["background"] == target["background"]).float().mean().item(),
        "scene": (cells_ok.all(1) & colour_ok.all(1) & (pred["background"] == target["background"]))
        .float()
        .mean()
        .item(),
    }


# ---- training ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OracleTrainConfig(OptimConfig):
    # Gaussian pixel noise of a random strength up to this (in [0, 1] units): generated
    # images are grainy, and the oracle should read the scene, not the grain.
    noise: float
    seed: int


def _loss(logits: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
    return (
        F.cross_entropy(logits["content"].flatten(0, 1), target["content"].flatten())
        + F.cross_entropy(logits["colour"].flatten(0, 1), target["colour"].flatten())
        + F.cross_entropy(logits["background"], target["background"])
    )


def _noisy(images: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    if strength <= 0:
        return images
    sigma = torch.rand(len(images), 1, 1, 1, generator=gen) * strength * 255
    noise = torch.randn(images.shape, generator=gen) * sigma
    return (images.float() + noise).clamp(0, 255).round().to(torch.uint8)


def train_oracle(
    oracle: Oracle,
    images: torch.Tensor,
    targets: dict[str, torch.Tensor],
    config: OracleTrainConfig,
    log: LogStep | None = None,
    par: Parallel | None = None,
    checkpoints: Checkpoints | None = None,
) -> float:
    """Train in place on uint8 images (N, 3, H, W) and their `stack_targets` (left on the
    CPU after); returns the last logged loss. Step s's batch and noise are drawn on the CPU
    from generators seeded by (seed, s), so every device and process draws the same ones
    and a run resumed from `checkpoints` ends where an uninterrupted one does."""
    par = par or Parallel()
    oracle.to(par.device).train()
    forward = par.wrap(oracle)

    def step_loss(step: int, gen: torch.Generator, micro: Micro) -> torch.Tensor:
        idx = epoch_batch(len(images), config.batch_size, step, config.seed)
        mine = micro.take(par.share(range(len(idx)), "evaluate.oracle.batch_size"))
        batch = _noisy(images[idx], config.noise, gen)[mine].to(par.device)
        rows = [idx[i] for i in mine]
        return _loss(forward(batch), {k: v[rows].to(par.device) for k, v in targets.items()})

    result = fit(dict(oracle.named_parameters()), step_loss, config, seed=config.seed, par=par,
                 checkpoints=checkpoints, buffers=dict(oracle.named_buffers()), log_step=log,
                 desc="oracle")  # fmt: skip
    oracle.eval().to("cpu")
    return result.metrics["loss"]


# ---- save / load -------------------------------------------------------------------------


def save(oracle: Oracle, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {**asdict(oracle.config), "contents": list(CONTENTS), "colours": list(COLOUR_NAMES),
              "backgrounds": list(BACKGROUNDS)}  # fmt: skip
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().contiguous() for k, v in oracle.state_dict().items()}
    save_file(state, folder / WEIGHTS_NAME)


def load(folder: str | Path) -> Oracle:
    folder = Path(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise OracleError(f"{folder}: no {WEIGHTS_NAME} (run the oracle stage)")
    config = json.loads((folder / CONFIG_NAME).read_text())
    vocab = (config.pop("contents"), config.pop("colours"), config.pop("backgrounds"))
    if vocab != (list(CONTENTS), list(COLOUR_NAMES), list(BACKGROUNDS)):
        raise OracleError(f"{folder}: trained on another world vocabulary; retrain it")
    oracle = Oracle(OracleConfig(**{**config, "widths": tuple(config["widths"])}))
    oracle.load_state_dict(load_file(folder / WEIGHTS_NAME))
    return oracle.eval()

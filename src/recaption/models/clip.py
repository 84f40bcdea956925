"""open_clip models: build from an architecture, load pretrained weights, save and reload.

A CLIP lives in a folder in open_clip's own hub layout (`open_clip_config.json` +
`open_clip_model.safetensors`), so `open_clip.create_model_and_transforms(
"local-dir:<folder>")` loads it anywhere, and its weights never pass through pickle.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from safetensors.torch import save_file

from recaption import io
from recaption.errors import UserError
from recaption.models import towers  # noqa: F401  (registers the built-in towers with timm)

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


class ClipError(UserError, ValueError):
    """An architecture or checkpoint that cannot be used."""


@dataclass
class Clip:
    """A CLIP model with what it takes to feed it."""

    model: open_clip.CLIP
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    tokenizer: Any

    @property
    def image_size(self) -> int:
        size = self.model_cfg["vision_cfg"]["image_size"]
        return size if isinstance(size, int) else size[0]

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return tuple(self.preprocess_cfg["mean"]), tuple(self.preprocess_cfg["std"])

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float (B, 3, H, W) scaled by the model's mean and std.

        Done per batch, on the model's device: far cheaper than per-image transforms.
        """
        mean, std = (torch.tensor(v, device=images.device).view(1, 3, 1, 1) for v in self.mean_std)
        return (images.float() / 255.0 - mean) / std


def architecture(model: str) -> tuple[str, dict[str, Any]]:
    """(name, model_cfg) of an open_clip architecture name or a JSON file of one."""
    path = Path(model)
    if path.suffix == ".json":
        if not path.is_file():
            raise ClipError(f"architecture file {model!r} not found")
        cfg = json.loads(path.read_text())
        return path.stem, cfg.get("model_cfg", cfg)
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise ClipError(
            f"unknown open_clip architecture {model!r}: use a name from "
            "open_clip.list_models() or a path to an architecture JSON"
        )
    return model, cfg


def _preprocess_cfg(model_cfg: dict[str, Any]) -> dict[str, Any]:
    return {
        "size": model_cfg["vision_cfg"]["image_size"],
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }


def create(model: str, pretrained: str | None, seed: int = 0) -> Clip:
    """A CLIP of architecture `model`, randomly initialised (seeded) or with `pretrained` weights.

    Args:
        pretrained: None for random weights, an open_clip pretrained tag (e.g.
            "laion2b_s34b_b79k"; downloaded unless cached), or a local .safetensors file.
    """
    name, model_cfg = architecture(model)
    if Path(model).suffix == ".json":
        open_clip.add_model_config(model)
    if pretrained and Path(pretrained).exists() and Path(pretrained).suffix != ".safetensors":
        raise ClipError(
            f"refusing to load {pretrained!r}: only .safetensors checkpoints are loaded, "
            "because pickled checkpoints (.pt, .bin) can run code when unpickled; convert it "
            "to safetensors with a tool you trust"
        )
    torch.manual_seed(seed)
    clip, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained or None)
    preprocess_cfg = {**_preprocess_cfg(model_cfg), **open_clip.get_model_preprocess_cfg(clip)}
    clip.eval()
    return Clip(clip, model_cfg, preprocess_cfg, open_clip.get_tokenizer(name))


def save(clip: Clip, out_dir: str | Path) -> None:
    """Write `clip` in open_clip's hub layout (config JSON + safetensors)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": clip.model_cfg, "preprocess_cfg": clip.preprocess_cfg}
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in clip.model.state_dict().items()}
    save_file(state, out_dir / WEIGHTS_NAME)


def load(folder: str | Path, device: str | torch.device = "cpu") -> Clip:
    """Load a CLIP saved by `save` (or any open_clip hub-layout folder with safetensors)."""
    folder = Path(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise ClipError(f"{folder}: no {WEIGHTS_NAME} (run the clip_pretrain stage)")
    config = json.loads((folder / CONFIG_NAME).read_text())
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}", device=device)
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    return Clip(model, config["model_cfg"], config["preprocess_cfg"], tokenizer)


def fingerprint(folder: str | Path) -> str:
    """Content hash of a saved CLIP's weights and config: embeddings are keyed by it."""
    folder = Path(folder)
    return io.sha256_bytes(
        (io.sha256_file(folder / WEIGHTS_NAME) + io.sha256_file(folder / CONFIG_NAME)).encode()
    )


def features(clip: Clip, batch: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, D [+ G*G*C]) float32: the pooled embedding, then the grid cells, each L2-normalised.

    `batch` is normalised pixels (`Clip.normalise`). The grid comes from the deepest
    intermediate feature map that still has at least G x G positions (a ViT's patch
    tokens, a ResNet's stage output), average-pooled to G x G; 0 gives the pooled
    embedding alone. Differentiable: training reads the same features the cache holds.
    """
    if grid == 0:
        return F.normalize(clip.model.encode_image(batch).float(), dim=-1)  # (B, D)
    out = clip.model.visual.forward_intermediates(batch)
    pooled = F.normalize(out["image_features"].float(), dim=-1)  # (B, D)
    maps = [m for m in out["image_intermediates"] if min(m.shape[-2:]) >= grid]
    if not maps:
        raise ClipError(f"no feature map of this CLIP has {grid}x{grid} positions")
    cells = F.adaptive_avg_pool2d(maps[-1].float(), grid).flatten(2)  # (B, C, G*G)
    cells = F.normalize(cells, dim=1).transpose(1, 2).flatten(1)  # (B, G*G*C)
    return torch.cat([pooled, cells], dim=1)


def feature_layout(clip: Clip, grid: int) -> tuple[int, int, int]:
    """(pooled_dim, grid_cells, cell_dim) of `features(clip, ., grid)`."""
    size = clip.image_size
    with torch.no_grad():
        probe = features(clip, torch.zeros(1, 3, size, size), grid)
    dim = clip.model_cfg["embed_dim"]
    cells = grid * grid
    return dim, cells, (probe.shape[1] - dim) // cells if cells else 0


def image_embeddings(
    clip: Clip, images: Sequence[Image.Image], batch_size: int = 256
) -> np.ndarray:
    """(N, D) float32 L2-normalised embeddings of `images` of any sizes: each centre-cropped
    to a square and resized (bicubic) to the model's input, the same way for every set, so
    two sets of images are compared as the CLIP sees them and not by how they were resized."""
    size = clip.image_size
    device = next(clip.model.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = [
                np.asarray(ImageOps.fit(i.convert("RGB"), (size, size), Image.BICUBIC))
                for i in images[start : start + batch_size]
            ]
            pixels = (
                torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(device)
            )  # (B, 3, S, S)
            out.append(F.normalize(clip.model.encode_image(clip.normalise(pixels)).float(), dim=-1))
    return torch.cat(out).cpu().numpy()


def text_embeddings(clip: Clip, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """(N, D) float32 L2-normalised embeddings of `texts` (truncated to the model's context)."""
    device = next(clip.model.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            ids = clip.tokenizer(list(texts[start : start + batch_size])).to(device)
            out.append(F.normalize(clip.model.encode_text(ids).float(), dim=-1))
    return torch.cat(out).cpu().numpy()

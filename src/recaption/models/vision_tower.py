"""The frozen vision tower of a vision-language model (LLaVA-style), as an image encoder.

A LLaVA-style model reads an image in three steps: its vision tower (a CLIP ViT) gives
hidden states, one layer of them is selected (`vision_feature_layer`; "default" drops
the CLS token), and a projector maps them into the language model's embedding space.
The tower stays frozen while the captioner is tuned, so the selected features are
what the embedding cache holds, and the projector reads them back from there:

    uint8 images (B, 3, S, S) --normalise--> tower --select layer--> (B, T, C) -> (B, T*C)

T is the number of patch tokens (+1 with the CLS token), C the tower's width.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText

from recaption import precision
from recaption.errors import UserError

# Part of the cache key: bump it when preprocessing or the feature selection changes.
PROCEDURE_VERSION = 1


class VisionTowerError(UserError):
    """A model that has no usable LLaVA-style vision tower; the message says why."""


def select_features(hidden_states: tuple[torch.Tensor, ...], layer, strategy: str):
    """The hidden states a LLaVA projector reads: one layer (or several, side by side),
    without the CLS token under the "default" strategy. (B, T, C)."""
    layers = [layer] if isinstance(layer, int) else list(layer)
    chosen = [hidden_states[i] for i in layers]
    if strategy == "default":
        chosen = [h[:, 1:] for h in chosen]
    return torch.cat(chosen, dim=-1)


def feature_shape(config) -> tuple[int, int]:
    """(T, C) of one image's selected features under a LLaVA-style `config`."""
    vc, layer = config.vision_config, config.vision_feature_layer
    patches = (vc.image_size // vc.patch_size) ** 2
    tokens = patches + (0 if config.vision_feature_select_strategy == "default" else 1)
    return tokens, vc.hidden_size * (1 if isinstance(layer, int) else len(layer))


def check_llava(spec: str, config) -> None:
    """Refuse a model that is not a vision tower + projector + language model."""
    missing = [a for a in ("vision_config", "text_config", "vision_feature_layer")
               if getattr(config, a, None) is None]  # fmt: skip
    if missing:
        raise VisionTowerError(
            f"captioner.lm: {spec!r} is a {type(config).__name__}, not a LLaVA-style "
            f"vision-language model (no {', '.join(missing)}); kind vlm needs one"
        )


class VisionTower(nn.Module):
    """A VLM's frozen vision tower and its image normalisation: uint8 images -> features.

    `tokens` (T) and `width` (C) give the shape of one image's features.
    """

    def __init__(self, tower: nn.Module, config, mean, std, image_size: int):
        """`config` is the VLM's (LlavaConfig-like); `mean`/`std` its processor's."""
        super().__init__()
        self.tower = tower.eval().requires_grad_(False)
        self.layer = config.vision_feature_layer
        self.strategy = config.vision_feature_select_strategy
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.tokens, self.width = feature_shape(config)

    @property
    def pooled_dim(self) -> int:
        """Columns of one cached row: T*C (there is no separate grid part)."""
        return self.tokens * self.width

    def to_device(self, device: torch.device) -> None:
        self.to(device)

    @torch.inference_mode()
    def encode(self, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> float32 (B, T*C) on the CPU."""
        x = batch.to(device, non_blocking=True).float() / 255.0
        x = (x - self.mean) / self.std
        dtype = next(self.tower.parameters()).dtype
        out = self.tower(x.to(dtype), output_hidden_states=True, return_dict=True)
        features = select_features(out.hidden_states, self.layer, self.strategy)  # (B, T, C)
        return features.flatten(1).float().cpu()

    def fingerprint(self) -> str:
        """Hash of what the features are a function of: the tower's weights, the layer
        selection, the normalisation and the image size."""
        h = hashlib.sha256()
        meta = [self.layer, self.strategy, self.image_size, self.mean.flatten().tolist(),
                self.std.flatten().tolist(), PROCEDURE_VERSION]  # fmt: skip
        h.update(repr(meta).encode())
        for name, tensor in sorted(self.tower.state_dict().items()):
            h.update(name.encode())
            flat = tensor.detach().cpu().reshape(-1).contiguous()  # (n,): 0-dim tensors too
            h.update(flat.view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


def image_norm(spec: str) -> tuple[list[float], list[float]]:
    """(mean, std) of a VLM's image processor: how its tower expects pixels."""
    try:
        processor = AutoImageProcessor.from_pretrained(spec)
    except (OSError, ValueError) as err:
        raise VisionTowerError(f"captioner.lm: no image processor in {spec!r}: {err}") from err
    return list(processor.image_mean), list(processor.image_std)


def vlm_config(spec: str):
    """The config of the LLaVA-style VLM `spec` (a local folder or a model id), or a
    VisionTowerError saying why it is not one."""
    if Path(spec).suffix == ".json":
        raise VisionTowerError(
            f"captioner.lm: {spec} is a config JSON; kind vlm needs a saved "
            "vision-language model (a local save_pretrained folder or a model id)"
        )
    try:
        config = AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as err:
        raise VisionTowerError(f"captioner.lm: cannot load {spec!r}: {err}") from err
    check_llava(spec, config)
    return config


def load(spec: str, dtype: torch.dtype = torch.float32) -> VisionTower:
    """The vision tower of the VLM `spec` (a local `save_pretrained` folder or a model id)."""
    config = vlm_config(spec)
    mean, std = image_norm(spec)
    model = AutoModelForImageTextToText.from_pretrained(
        spec, use_safetensors=True, **precision.load_kwargs(dtype)
    )
    # Images are fitted to the tower's own input size (its position table's).
    return VisionTower(model.model.vision_tower, config, mean, std,
                       config.vision_config.image_size)  # fmt: skip

"""The vision-language captioner: a LLaVA-style model tuned from cached tower features.

    cached features (B, T*C) --view--> (B, T, C) --the VLM's projector--> (B, T, d)
    [image tokens (B, T, d), caption tokens (B, L, d)] --the VLM's LM--> next-token loss

The vision tower is frozen and never runs here: its features come from the embedding
cache (models/vision_tower.py), so training and decoding need no pixels. The projector
always trains; the language model trains in full (`train_lm`), through LoRA adapters
(`lora.rank` > 0, merged before saving), or not at all. The loss, padding and decoding
are the prefix captioner's (models/captioner.py): only where the prefix comes from
differs. A saved folder is the whole VLM as `save_pretrained` writes it (safetensors,
vision tower included), its tokenizer and image processor, and vlm.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

from recaption import io, precision
from recaption.models import lora as lora_lib
from recaption.models import vision_tower
from recaption.models.captioner import Captioner, CaptionerError, ready_tokenizer

VLM_CONFIG = "vlm.json"
IMAGE = "<image>"  # where the image tokens go in `captioner.prompt`


@dataclass(frozen=True)
class VlmLora:
    """LoRA on the VLM's language model (rank 0: off)."""

    rank: int = 0
    alpha: float = 1.0
    targets: tuple[str, ...] = ()
    seed: int = 0


class Projector(nn.Module):
    """Cached tower features (B, T*C) -> the LM's image tokens (B, T, d), through the
    VLM's own projector (the same module, shared with the VLM)."""

    def __init__(self, projector: nn.Module, tokens: int, width: int):
        super().__init__()
        self.projector, self.tokens, self.width = projector, tokens, width

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[1] != self.tokens * self.width:
            raise ValueError(
                f"features have {features.shape[1]} columns, the projector takes "
                f"{self.tokens} x {self.width}: were they cached by this VLM's tower?"
            )
        dtype = next(self.projector.parameters()).dtype
        x = features.view(features.shape[0], self.tokens, self.width)  # (B, T, C)
        return self.projector(x.to(dtype))  # (B, T, d)


def split_prompt(prompt: str) -> tuple[str, str]:
    """(text before, text after) the one IMAGE placeholder of `prompt`."""
    if prompt.count(IMAGE) != 1:
        raise CaptionerError(
            f"captioner.prompt = {prompt!r}: it must hold {IMAGE} exactly once (where the "
            "image tokens go)"
        )
    before, after = prompt.split(IMAGE)
    return before, after


class VlmCaptioner(Captioner):
    """A LLaVA-style VLM, its tokenizer and image processor, captioning from cached features.

    `prompt` frames the image tokens as the VLM was trained to see them, e.g.
    "USER: <image>\nDescribe the image. ASSISTANT:"; the caption follows it. The text
    before the image is tokenized with the tokenizer's special tokens (a Llama BOS).
    """

    def __init__(
        self, vlm: nn.Module, tokenizer, processor, lora: VlmLora | None = None,
        prompt: str = IMAGE,
    ):  # fmt: skip
        tokens, width = vision_tower.feature_shape(vlm.config)
        super().__init__(vlm, tokenizer, Projector(vlm.model.multi_modal_projector, tokens, width))
        self.processor, self.prompt = processor, prompt
        self.lora = lora or VlmLora()
        before, after = split_prompt(prompt)
        self.before = tokenizer(before, add_special_tokens=True)["input_ids"]
        self.after = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []

    @property
    def prefix_tokens(self) -> int:
        return len(self.before) + self.mapper.tokens + len(self.after)

    def prefix(self, features: torch.Tensor) -> torch.Tensor:
        """[prompt before, image tokens, prompt after]: (B, F) -> (B, P, d)."""
        image = self.mapper(features.float())  # (B, T, d)
        embed = self.lm.get_input_embeddings()
        b, device = image.shape[0], image.device
        parts = [
            embed(torch.tensor(ids, dtype=torch.long, device=device)).unsqueeze(0).expand(b, -1, -1)
            for ids in (self.before, self.after)
        ]  # (B, len, d) each
        return torch.cat([parts[0].to(image.dtype), image, parts[1].to(image.dtype)], dim=1)

    @property
    def max_caption_tokens(self) -> int | None:
        limit = getattr(self.lm.config.text_config, "max_position_embeddings", None)
        return None if limit is None else limit - self.prefix_tokens

    @property
    def language_model(self) -> nn.Module:
        return self.lm.model.language_model

    def tower(self) -> vision_tower.VisionTower:
        """The frozen tower as the embed stage runs it (for its cache fingerprint)."""
        p, config = self.processor, self.lm.config
        size = config.vision_config.image_size
        return vision_tower.VisionTower(
            self.lm.model.vision_tower, config, p.image_mean, p.image_std, size
        )

    def trainable(self, train_lm: bool) -> dict[str, nn.Parameter]:
        """The projector's parameters, and with `train_lm` the language model's (or only
        its LoRA adapters'); the vision tower is always frozen."""
        self.lm.requires_grad_(False)
        if train_lm and self.lora.rank:
            if not lora_lib.adapted(self.language_model):
                lora_lib.add(self.language_model, self.lora.rank, self.lora.alpha,
                             self.lora.targets, self.lora.seed)  # fmt: skip
        elif train_lm:
            self.language_model.requires_grad_(True)
            self.lm.lm_head.requires_grad_(True)
        self.mapper.requires_grad_(True)
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def save(self, folder: str | Path) -> None:
        """The VLM's `save_pretrained` folder (adapters merged), tokenizer, processor and
        vlm.json."""
        folder = Path(folder)
        if lora_lib.adapted(self.language_model):
            lora_lib.merge(self.language_model)
        self.lm.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        shape = {"tokens": self.mapper.tokens, "width": self.mapper.width}
        io.write_json(folder / VLM_CONFIG, {**shape, "prompt": self.prompt})


def _load_parts(spec: str, dtype: torch.dtype):
    """(model, tokenizer, processor) of a LLaVA-style VLM, or an error saying why not."""
    vision_tower.vlm_config(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec)
        processor = AutoImageProcessor.from_pretrained(spec)
        model = AutoModelForImageTextToText.from_pretrained(
            spec, use_safetensors=True, **precision.load_kwargs(dtype)
        )
    except (OSError, ValueError) as err:
        raise CaptionerError(f"captioner.lm: cannot load {spec!r} as a VLM: {err}") from err
    return model, ready_tokenizer(tokenizer, spec), processor


def create(spec: str, lora: VlmLora | None = None, prompt: str = IMAGE) -> VlmCaptioner:
    """A captioner from the pretrained VLM `spec` (a local folder or a model id)."""
    split_prompt(prompt)  # a bad prompt fails before the model loads
    model, tokenizer, processor = _load_parts(spec, torch.float32)
    return VlmCaptioner(model, tokenizer, processor, lora, prompt)


def is_vlm(folder: str | Path) -> bool:
    """Whether `folder` holds a captioner saved by `VlmCaptioner.save`."""
    return (Path(folder) / VLM_CONFIG).is_file()


def load(folder: str | Path, dtype: torch.dtype = torch.float32) -> VlmCaptioner:
    """A captioner saved by `VlmCaptioner.save`, its weights in `dtype`; safetensors only."""
    if not is_vlm(folder):
        raise CaptionerError(f"{folder} is not a VLM captioner folder: {VLM_CONFIG} is missing")
    model, tokenizer, processor = _load_parts(str(folder), dtype)
    prompt = json.loads((Path(folder) / VLM_CONFIG).read_text())["prompt"]
    return VlmCaptioner(model, tokenizer, processor, prompt=prompt)

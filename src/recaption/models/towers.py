"""Image towers for small images, registered with timm so open_clip builds them by name.

open_clip's ModifiedResNet halves the image twice in its stem, so at 32 px a
6-pixel star and a 6-pixel circle are one or two positions of an 8x8 map before
any layer has seen their outline: trained on the main object's shape directly,
the built-in tower reads it on 0.53 of held-out images, a plain stack of 3x3
convolutions that halves the image only after looking at it reads 0.98 (see
reports/benchmarks.md). `ConvTower` is that stack.

An open_clip architecture uses it through timm, as any timm tower:

    "vision_cfg": {"image_size": 32, "timm_model_name": "recaption_convnet_small",
                   "timm_pool": "avg", "timm_proj": "linear"}

Importing this module registers the names; `recaption.models.clip` imports it, so
a saved CLIP loads anywhere recaption is imported (`open_clip.create_model_and_transforms(
"local-dir:<folder>")` included).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from timm.models._features import feature_take_indices
from torch import nn

# name -> channels of each stage; stage i > 0 halves the map.
WIDTHS: dict[str, tuple[int, ...]] = {
    "recaption_convnet_small": (32, 64, 128),
    "recaption_convnet_base": (48, 96, 192),
}


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()
    )


class ConvTower(nn.Module):
    """Stages of two 3x3 convolutions (BatchNorm, GELU); every stage after the first
    starts by halving the map. At 32 px with three stages the last map is 8x8.

    It follows timm's model interface (`num_features`, `reset_classifier`,
    `forward_features` / `forward_head`, `forward_intermediates`), which is what
    open_clip's `TimmModel` calls.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = WIDTHS["recaption_convnet_small"],
        in_chans: int = 3,
        num_classes: int = 0,
        global_pool: str = "avg",
    ):
        super().__init__()
        ins = (in_chans, *widths[:-1])
        self.stages = nn.ModuleList(
            nn.Sequential(_conv(c_in, c_out, 1 if i == 0 else 2), _conv(c_out, c_out, 1))
            for i, (c_in, c_out) in enumerate(zip(ins, widths, strict=True))
        )
        self.num_features = widths[-1]
        self.default_cfg: dict[str, Any] = {"pool_size": None, "num_classes": num_classes}
        self.pretrained_cfg = self.default_cfg
        self.reset_classifier(num_classes, global_pool)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(
                    f"ConvTower pools by 'avg' or not at all (''), not {global_pool!r}"
                )
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x  # (B, C, H / 2^(S-1), W / 2^(S-1))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))  # (B, C)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Each stage's output map (NCHW), as timm models give them: the stages named by
        `indices` (the last n for an int, all for None), and the last map unless
        `intermediates_only`. `norm` is accepted for timm's interface (no norm here)."""
        if output_fmt != "NCHW":
            raise ValueError(f"ConvTower gives NCHW maps, not {output_fmt}")
        take, last = feature_take_indices(len(self.stages), indices)
        stages = self.stages[: last + 1] if stop_early else self.stages
        maps = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                maps.append(x)
        return maps if intermediates_only else (x, maps)


def _entry(name: str, pretrained: bool, kwargs: dict[str, Any]) -> ConvTower:
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights: it is trained by clip_pretrain")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)  # timm's create_model passes these to every entry point
    return ConvTower(WIDTHS[name], **kwargs)


@register_model
def recaption_convnet_small(pretrained: bool = False, **kwargs: Any) -> ConvTower:
    """Three stages of 32, 64, 128 channels: an 8x8 map at 32 px."""
    return _entry("recaption_convnet_small", pretrained, kwargs)


@register_model
def recaption_convnet_base(pretrained: bool = False, **kwargs: Any) -> ConvTower:
    """Three stages of 48, 96, 192 channels: an 8x8 map at 32 px."""
    return _entry("recaption_convnet_base", pretrained, kwargs)

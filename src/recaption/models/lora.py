"""LoRA on a pretrained UNet (peft): train a low-rank update of chosen layers, then merge it.

`add` wraps every linear layer whose name ends in one of `targets` (diffusers' attention
projections `to_q`, `to_k`, `to_v`, `to_out.0` by default) with a rank-r update
W + (alpha / r) B A, B starting at zero, so training starts from the pretrained UNet and
changes only A and B; every base weight is frozen. `merge` folds each update into its
base weight and removes the adapter layers, so the UNet saves with its original names
and any diffusers pipeline loads it as a plain UNet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer

ADAPTER = "default"


def add(model: torch.nn.Module, rank: int, alpha: float, targets: Sequence[str], seed: int) -> None:
    """Wrap `model`'s `targets` layers with rank-`rank` adapters (A drawn from `seed`) and
    freeze everything else."""
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                        init_lora_weights=True)  # fmt: skip
    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, param in model.named_parameters():
        param.requires_grad_(is_adapter(name))
    if not adapted(model):
        raise ValueError(f"LoRA targets {list(targets)} match no layer of the model")


def is_adapter(name: str) -> bool:
    """Whether the parameter `name` is an adapter's (A or B), not a base weight."""
    return ".lora_A." in name or ".lora_B." in name


def adapted(model: torch.nn.Module) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def merge(model: torch.nn.Module) -> None:
    """Fold every adapter into its base weight and put the base layers back in place."""
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in wrapped:
        with torch.no_grad():
            module.merge(adapter_names=[ADAPTER])
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    if hasattr(model, "peft_config"):  # set by inject_adapter_in_model
        del model.peft_config
    model.requires_grad_(True)

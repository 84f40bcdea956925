"""Which arithmetic a model computes in: `auto` follows what the hardware does natively.

bf16 autocast pays only where the device computes bf16 natively: a CUDA GPU that
supports it, or a CPU with AVX-512 BF16 or AMX. Elsewhere the CPU emulates it and
the same step runs many times slower (measured 19x on an AVX2-only CPU against
fp32), so `auto` resolves to bf16 there and to fp32 otherwise. fp16 (with a
gradient scaler) is an explicit choice for GPUs without bf16.

Precision changes the output bytes: runs of the same params on hardware of another
class, or in another precision, give different (equally valid) weights, which is
why every model's lineage records what `hardware()` and `resolve()` said.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from recaption.errors import UserError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Measured: a conv + linear step under bf16 autocast against fp32 on an AVX2-only CPU.
EMULATED_BF16_SLOWDOWN = "19x"


@dataclass(frozen=True)
class Hardware:
    """What decides the precision: the device kind, its name, whether it has native bf16."""

    device: str  # "cpu" | "cuda"
    name: str  # the CPU capability torch dispatches to ("AVX2", "AVX512", ...) or the GPU
    native_bf16: bool

    def record(self) -> dict[str, str | bool]:
        return {"device": self.device, "hardware": self.name, "native_bf16": self.native_bf16}


def cpu_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX) and torch's
    kernels may use it (`ATEN_CPU_CAPABILITY=avx2` rules it out, for example)."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def hardware(device: str | torch.device = "cpu") -> Hardware:
    """The hardware of `device` ("cpu" or "cuda[:i]")."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return Hardware("cuda", name, torch.cuda.is_bf16_supported(including_emulation=False))
    return Hardware(device.type, torch.backends.cpu.get_cpu_capability(), cpu_native_bf16())


def resolve(precision: str, hw: Hardware, key: str = "precision") -> str:
    """ "auto" -> "bf16" on native-bf16 hardware, else "fp32"; an explicit choice is kept.

    An explicit bf16 without native support is allowed (it still computes the right
    thing) but logged with the slowdown to expect; fp16 needs a CUDA GPU.

    Args:
        precision: "auto", "fp32", "bf16" or "fp16", as given in params.
        hw: the hardware it will run on (see `hardware`).
        key: the params key it came from, named in messages.
    """
    if precision not in PRECISIONS:
        raise UserError(f"{key} is {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if hw.native_bf16 else "fp32"
    if precision == "fp16" and hw.device != "cuda":
        raise UserError(f"{key} is 'fp16', which needs a CUDA GPU; use 'auto', 'bf16' or 'fp32'")
    if precision == "bf16" and not hw.native_bf16:
        log.warning(
            "%s is 'bf16' but %s (%s) has no native bf16: autocast emulates it, measured up to "
            "%s slower than fp32; set it to 'auto' or 'fp32'",
            key, hw.device, hw.name, EMULATED_BF16_SLOWDOWN,
        )  # fmt: skip
    return precision


def settle(precision: str, device: str | torch.device, key: str) -> tuple[str, dict]:
    """Resolve `precision` for `device` and log it.

    Returns:
        (the resolved precision, the record a lineage or report keeps:
        {"precision", "device", "hardware", "native_bf16"}).
    """
    hw = hardware(device)
    resolved = resolve(precision, hw, key)
    log.info("%s: %s on %s (%s)", key, resolved, hw.device, hw.name)
    return resolved, {"precision": resolved, **hw.record()}


def autocast(
    precision: str, device: str | torch.device = "cpu"
) -> contextlib.AbstractContextManager:
    """Autocast to a resolved precision on `device` ("fp32": a no-op)."""
    if precision == "auto":
        raise ValueError("resolve 'auto' first (recaption.precision.resolve)")
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=_DTYPES.get(precision, torch.bfloat16),
                          enabled=precision in _DTYPES)  # fmt: skip


def weights_dtype(precision: str) -> torch.dtype:
    """The dtype a model that only infers (never trains) loads its weights in, for a
    resolved precision: bf16 and fp16 halve a big pretrained model's memory, and autocast
    computes in that dtype anyway; fp32 loads them as they are. A model that trains keeps
    fp32 weights (autocast casts per op), as mixed precision needs."""
    if precision == "auto":
        raise ValueError("resolve 'auto' first (recaption.precision.resolve)")
    return _DTYPES.get(precision, torch.float32)


def load_kwargs(dtype: torch.dtype) -> dict:
    """What a transformers or diffusers `from_pretrained` takes to load in `dtype`: nothing
    for fp32 (the call as it always was), else `torch_dtype`, which every supported version
    of both reads (the newest also read `dtype` and warn that `torch_dtype` is deprecated)."""
    return {} if dtype == torch.float32 else {"torch_dtype": dtype}


def grad_scaler(precision: str, device: str | torch.device = "cpu") -> torch.amp.GradScaler:
    """A loss scaler for fp16 training; for fp32 and bf16 a pass-through (disabled)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")


def clipped_step(
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    grad_clip: float,
    scaler: torch.amp.GradScaler,
) -> None:
    """The step after the backward passes (one, or one per accumulated micro-batch, each
    through `scaler.scale`): unscale, clip the gradient norm to `grad_clip`, step. With
    a disabled scaler it is the plain backward / clip / step, to the bit."""
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()

"""A guard against scoring noise: refuse a batch of generated images that look like noise.

A broken generator (diverged, untrained, wrong checkpoint, a scheduler bug) draws
noise, and noise still gets prompt-following and CLIP scores, near chance but not
obviously wrong in a table. The statistic here is roughness: the mean absolute
difference between neighbouring pixels (horizontal and vertical, all channels, in
0..255 levels). Pictures are mostly flat regions with edges; noise changes at every
pixel. Two independent uniform levels differ by 255 / 3 = 85 on average, Gaussian
noise clipped to 0..255 by more.

A batch is refused when its median roughness is past the midpoint between the
reference images' (the dataset's) median and uniform noise's: when more than half
the images are nearer to noise than to the pictures the generator learnt from.
Per-channel mean and standard deviation do not separate the two: a weak but sound
generator's batch was further from the dataset's statistics than uniform noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recaption.errors import UserError

# Mean |u - v| of two independent uniform levels in 0..255.
NOISE_ROUGHNESS = 255 / 3
# Where between the reference's median roughness (0) and noise's (1) the line is drawn.
NOISE_FRACTION = 0.5


class NoiseError(UserError):
    """Generated images that look like noise: no metric of them means anything."""


@dataclass(frozen=True)
class NoiseCheck:
    """Median roughness of the generated and reference images, and the refusal line."""

    generated: float
    reference: float
    threshold: float

    @property
    def noise(self) -> bool:
        return self.generated > self.threshold


def roughness(images: np.ndarray) -> np.ndarray:
    """images: uint8 (N, H, W, C). Returns (N,): mean |difference| of neighbouring pixels."""
    x = images.astype(np.float32)
    across = np.abs(np.diff(x, axis=2)).mean(axis=(1, 2, 3))  # (N,)
    down = np.abs(np.diff(x, axis=1)).mean(axis=(1, 2, 3))  # (N,)
    return (across + down) / 2


def check_noise(generated: np.ndarray, reference: np.ndarray) -> NoiseCheck:
    """Compare the median roughness of `generated` with the line drawn from `reference`
    (both uint8 (N, H, W, C), same resolution); see the module docstring."""
    if len(generated) == 0 or len(reference) == 0:
        raise ValueError("the noise check needs at least one generated and one reference image")
    ref = float(np.median(roughness(reference)))
    threshold = ref + NOISE_FRACTION * (NOISE_ROUGHNESS - ref)
    return NoiseCheck(float(np.median(roughness(generated))), ref, threshold)


def refuse_noise(generated: np.ndarray, reference: np.ndarray) -> NoiseCheck:
    """`check_noise`, raising NoiseError when the generated images look like noise."""
    check = check_noise(generated, reference)
    if check.noise:
        raise NoiseError(
            f"the generated images look like noise: median roughness (mean |difference| of "
            f"neighbouring pixels) {check.generated:.1f} levels, the dataset's "
            f"{check.reference:.1f}, refused above {check.threshold:.1f} (uniform noise: "
            f"{NOISE_ROUGHNESS:.0f}). Check the generator (its training loss, checkpoint and "
            "evaluate.steps) before reading any score of it."
        )
    return check

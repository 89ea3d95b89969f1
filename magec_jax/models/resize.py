"""Image resizing shared by the loss networks, exact, differentiable and cheap.

PyTorch's ``F.interpolate(mode='area')`` / ``AdaptiveAvgPool2d`` and bilinear ``align_corners=False``
upsampling, written as small constant matrices applied per spatial axis (integer area factors are a reshape and
a mean). NHWC throughout.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np



@functools.lru_cache(maxsize=64)
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` weights of ``AdaptiveAvgPool1d(n_out)``: row i averages [floor(i n/m), ceil((i+1) n/m))."""
    a = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        start, stop = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        a[i, start:stop] = 1.0 / (stop - start)
    return a.astype(np.float32)


@functools.lru_cache(maxsize=64)
def _linear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` weights of torch's linear resize, ``align_corners=False`` (source clamped at 0)."""
    a = np.zeros((n_out, n_in), np.float64)
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    np.add.at(a, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(a, (np.arange(n_out), hi), frac)
    return a.astype(np.float32)


def _apply_axis_matrices(x_BxHxWxC: jax.Array, rows_OxH: np.ndarray, cols_PxW: np.ndarray) -> jax.Array:
    """``out[b,o,p,c] = sum_{h,w} rows[o,h] x[b,h,w,c] cols[p,w]`` at full precision (the weights are exact)."""
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(rows_OxH, x_BxHxWxC.dtype), x_BxHxWxC, precision=hi)
    return jnp.einsum("pw,bowc->bopc", jnp.asarray(cols_PxW, x.dtype), x, precision=hi)


def area_resize(x_BxHxWxC: jax.Array, size_hw: tuple[int, int]) -> jax.Array:
    """Adaptive average pooling to ``size_hw``, i.e. ``F.interpolate(mode='area')`` / ``AdaptiveAvgPool2d``.

    Integer factors are plain box averages (a reshape and a mean); other sizes use the overlapping windows of
    PyTorch's adaptive pooling.
    """
    b, h, w, c = x_BxHxWxC.shape
    oh, ow = size_hw
    if (oh, ow) == (h, w):
        return x_BxHxWxC
    if h % oh == 0 and w % ow == 0:
        return x_BxHxWxC.reshape(b, oh, h // oh, ow, w // ow, c).mean(axis=(2, 4))
    return _apply_axis_matrices(x_BxHxWxC, _area_matrix(h, oh), _area_matrix(w, ow))


def resize_images(x_BxHxWxC: jax.Array, size_hw: tuple[int, int]) -> jax.Array:
    """Resizes each spatial axis: area average when shrinking, bilinear (``align_corners=False``) when growing."""
    _, h, w, _ = x_BxHxWxC.shape
    oh, ow = size_hw
    if oh <= h and ow <= w:
        return area_resize(x_BxHxWxC, size_hw)
    rows = _area_matrix(h, oh) if oh <= h else _linear_matrix(h, oh)
    cols = _area_matrix(w, ow) if ow <= w else _linear_matrix(w, ow)
    return _apply_axis_matrices(x_BxHxWxC, rows, cols)

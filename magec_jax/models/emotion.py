"""Facial-expression classifier (reduced mini-Xception, FER2013; oarriaga/face_classification), as shipped
by Human.

Ported from the TensorFlow.js graph ``emotion.json``; weights are converted by
:func:`ports.tfjs.convert_emotion`. Layer names mirror the graph (prefix ``StatefulPartitionedCall/model_1/``
dropped): ``conv2d_1``..``conv2d_5`` and ``separable_conv2d_1``..``4`` (each a 3x3 ``depthwise`` conv and a
1x1 ``pointwise`` conv). BatchNorm is folded into the conv kernels and offsets (the ``bias`` leaves).

Input: ``x_Bx64x64x1`` grayscale ``(gray - 0.5) * 2`` with gray in [0, 1]. :func:`preprocess` makes it from
project images (RGB in [-1, 1], any resolution) with the same face box and resize policy as
:mod:`magec_jax.models.faceres` (see its module docstring).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from magec_jax.models.faceres import FACE_BOX, Box, crop_resize

INPUT_SIZE = 64
# Label order of Human's 1-channel emotion models.
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# ITU-R BT.601 luma weights, as Human's grayscale conversion uses them.
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


class SeparableConv(nn.Module):
    """A Keras SeparableConv2D: 3x3 depthwise (SAME, channel multiplier 1, no bias), then 1x1 conv + bias."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        c = x_BxHxWxC.shape[-1]
        x = nn.Conv(
            c, (3, 3), padding="SAME", feature_group_count=c, use_bias=False, dtype=self.dtype, name="depthwise"
        )(x_BxHxWxC)
        return nn.Conv(self.features, (1, 1), padding="VALID", dtype=self.dtype, name="pointwise")(x)


class Emotion(nn.Module):
    """The emotion network.

    Attributes:
      dtype: computation dtype (float32, or bfloat16 for speed); outputs are float32.
    """

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_Bx64x64x1: jax.Array) -> dict[str, jax.Array]:
        """Returns ``logits`` [B,7] (pre-softmax, the graph's global average pooling) and ``probs`` [B,7]."""
        dt = self.dtype
        x = x_Bx64x64x1.astype(dt)
        x = nn.relu(nn.Conv(32, (3, 3), strides=2, padding="VALID", dtype=dt, name="conv2d_1")(x))  # 31x31
        a = nn.relu(nn.Conv(64, (3, 3), padding="VALID", dtype=dt, name="conv2d_2")(x))  # 29x29x64
        y = nn.relu(SeparableConv(128, dtype=dt, name="separable_conv2d_1")(a))
        y = SeparableConv(128, dtype=dt, name="separable_conv2d_2")(y)
        y = nn.max_pool(y, (3, 3), strides=(2, 2), padding="SAME")  # 15x15x128
        add_1 = y + nn.Conv(128, (1, 1), strides=2, padding="SAME", dtype=dt, name="conv2d_3")(a)
        y = nn.relu(SeparableConv(256, dtype=dt, name="separable_conv2d_3")(nn.relu(add_1)))
        y = SeparableConv(256, dtype=dt, name="separable_conv2d_4")(y)
        y = nn.max_pool(y, (3, 3), strides=(2, 2), padding="SAME")  # 8x8x256
        # The residual branch reads add_1 from before the ReLU.
        add_2 = y + nn.Conv(256, (1, 1), strides=2, padding="SAME", dtype=dt, name="conv2d_4")(add_1)
        y = nn.Conv(len(LABELS), (3, 3), padding="SAME", dtype=dt, name="conv2d_5")(add_2)
        logits_Bx7 = jnp.mean(y.astype(jnp.float32), axis=(1, 2))
        return {"logits": logits_Bx7, "probs": jax.nn.softmax(logits_Bx7, axis=-1)}


def apply(variables: Any, x_Bx64x64x1: jax.Array, *, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    """``Emotion(dtype).apply(variables, x)``: the network as a pure function of its grayscale input."""
    return Emotion(dtype=dtype).apply(variables, x_Bx64x64x1)


def gray_input(face01_BxHxWx3: jax.Array) -> jax.Array:
    """RGB face in [0, 1] -> the network's input ``(gray - 0.5) * 2``, shape ``[B, H, W, 1]``."""
    r, g, b = GRAY_WEIGHTS
    gray = face01_BxHxWx3[..., 0:1] * r + face01_BxHxWx3[..., 1:2] * g + face01_BxHxWx3[..., 2:3] * b
    return (gray - 0.5) * 2.0


def preprocess(images_BxHxWx3: jax.Array, *, box: Box | None = FACE_BOX) -> jax.Array:
    """Project images (RGB in [-1, 1], any resolution) -> emotion input (``[B, 64, 64, 1]``)."""
    face = crop_resize(images_BxHxWx3, INPUT_SIZE, box)
    return gray_input((face + 1.0) * 0.5)

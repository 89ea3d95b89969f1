"""torchvision's VGG16 up to the second fully connected layer: the image feature of the realism score; and its
pooled relu5_3 as an identity network for images that are not faces (:func:`vgg16_identity`).

    x in [-1, 1] --resize to 224x224, ImageNet normalisation--> ``features`` (the LPIPS trunk, relu5_3)
      --> 2x2 max-pool --> [B, 7, 7, 512] --> flatten --> fc1 + ReLU --> fc2 + ReLU    [B, fc_width]

Parameter names mirror torchvision: ``features/<N>`` is ``features.N``, ``classifier_0`` is ``classifier.0`` and
``classifier_3`` is ``classifier.3`` (the 1000-way ``classifier.6`` is not part of the feature). The flatten is
NHWC here; the converter (``ports.loss_nets.convert_vgg16_fc2``) permutes fc1's rows from torch's NCHW order.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from magec_jax.models.interfaces import IdentityEmbedder
from magec_jax.models.lpips import SCALE, SHIFT, VGG16Features
from magec_jax.models.resize import resize_images

KIND = "vgg16_fc2"
INPUT_SIZE = 224


def imagenet_input(images_BxHxWxC: jax.Array) -> jax.Array:
    """Generator images (RGB, [-1, 1], any size) -> VGG16's input: 224x224 (area average when shrinking,
    bilinear when growing), ImageNet-normalised. LPIPS's ScalingLayer is exactly ``((x + 1) / 2 - mean) / std``
    with the ImageNet mean and std."""
    x = resize_images(images_BxHxWxC.astype(jnp.float32), (INPUT_SIZE, INPUT_SIZE))
    shift = jnp.asarray(SHIFT, jnp.float32).reshape(1, 1, 1, 3)
    scale = jnp.asarray(SCALE, jnp.float32).reshape(1, 1, 1, 3)
    return (x - shift) / scale


class VGG16FC2(nn.Module):
    """torchvision ``vgg16`` up to the second classifier ReLU (``classifier.4``), eval mode (no dropout).

    Takes :func:`imagenet_input` images ``[B, 224, 224, 3]``; returns ``[B, fc_width]``.

    Attributes:
      fc_width: width of fc1 and fc2 (4096 for the real network).
    """

    fc_width: int = 4096

    @nn.compact
    def __call__(self, x_Bx224x224x3: jax.Array) -> jax.Array:
        relu5_3 = VGG16Features(name="features")(x_Bx224x224x3)[-1]  # [B, 14, 14, 512]
        pooled_Bx7x7x512 = nn.max_pool(relu5_3, (2, 2), strides=(2, 2), padding="VALID")
        h = pooled_Bx7x7x512.reshape(pooled_Bx7x7x512.shape[0], -1)
        h = nn.relu(nn.Dense(self.fc_width, name="classifier_0")(h))
        return nn.relu(nn.Dense(self.fc_width, name="classifier_3")(h))


# ---- an identity network for images that are not faces ---------------------------------------------------------

IDENTITY_KIND = "vgg16_relu5_3"


def relu5_3_mean(variables, images_BxHxWxC: jax.Array) -> jax.Array:
    """The spatial mean of relu5_3 of VGG16's ``features`` trunk (``variables``: ``{"params": trunk}``) on
    :func:`imagenet_input` images: ``[B, 512]``."""
    relu5_3 = VGG16Features().apply(variables, imagenet_input(images_BxHxWxC))[-1]
    return jnp.mean(relu5_3, axis=(1, 2))


def relu5_3_identity_embed(variables, images_BxHxWxC: jax.Array) -> jax.Array:
    """:func:`relu5_3_mean`, L2-normalised per image (an identity embedding: the ID term is ``1 - cos``)."""
    f = relu5_3_mean(variables, images_BxHxWxC)
    return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)


def vgg16_identity(trunk_variables) -> IdentityEmbedder:
    """ImageNet VGG16's pooled relu5_3 as the ID term's network for images that are not faces.

    The paper (after encoder4editing) uses a MoCo v2 ResNet-50 trained on ImageNet for cars; where those weights
    cannot be had, this is the nearest stand-in whose real weights ship with LPIPS: a general-purpose ImageNet
    feature, global-average-pooled and L2-normalised like MoCo's (``trunk_variables``: ``{"params": trunk}``,
    the LPIPS weights' ``features``). A documented deviation wherever it is used."""
    return IdentityEmbedder(name=IDENTITY_KIND, apply=relu5_3_identity_embed, variables=trunk_variables)

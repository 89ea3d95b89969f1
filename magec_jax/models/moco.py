"""The MoCo v2 ResNet-50 as an identity network, as encoder4editing's ``MocoLoss`` uses it (the ID loss of MAGEC
for images that are not faces).

    images_BxHxWx3 in [-1, 1], any size
      nearest resize to 224x224 (torch's legacy ``F.interpolate(x, size=224)``: both axes, aspect ratio NOT
          kept; source index floor(i * (in / out)) in float32)
      NO ImageNet mean/std normalisation: e4e feeds its [-1, 1] tensors straight in
      torchvision ResNet-50 trunk (``conv1`` .. ``layer4``, global mean), eval-mode BatchNorm      [B, 2048]
      features = v / max(||v||_2, 1e-12)                                                          unit rows

The weights are MoCo v2's query encoder without its MLP projection head (``module.encoder_q.*`` minus
``fc.0``/``fc.2``; ``ports.moco`` converts an official ``main_moco.py`` checkpoint). Layer names mirror
torchvision's (``conv1``, ``layer2.0/downsample.0``), as in :mod:`magec_jax.models.resnet`.

Loss (e4e ``MocoLoss.forward(y_hat, y, x)``, :func:`moco_loss`): with f = the features, per sample
``diff_target = f(y_hat)·f(y)``, ``diff_input = f(y_hat)·f(x)``, ``diff_views = f(y)·f(x)``;
``loss = mean(1 - diff_target)`` (no gradient through ``f(y)``), ``sim_improvement = mean(diff_target -
diff_views)``. e4e's ``.squeeze()`` makes a batch of one fail there; here any batch size works.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from magec_jax.models.interfaces import IdentityEmbedder
from magec_jax.models.resnet import resnet50_trunk

KIND = "moco"
INPUT_SIZE = 224
FEATURE_DIM = 2048
NORM_EPS = 1e-12  # F.normalize's eps
CONFIG = {"arch": "resnet50", "moco_version": 2, "input_size": INPUT_SIZE, "feature_dim": FEATURE_DIM}


class MocoResNet50(nn.Module):
    """The e4e MoCo trunk: ``[B, 224, 224, 3]`` (fed as is) -> unnormalised ``avgpool`` features ``[B, 2048]``."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_Bx224x224x3: jax.Array) -> jax.Array:
        if x_Bx224x224x3.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"the MoCo trunk takes [B, 224, 224, 3] images, got {x_Bx224x224x3.shape}")
        pooled_Bx2048, _ = resnet50_trunk(x_Bx224x224x3, False, self.dtype)
        return pooled_Bx2048.astype(jnp.float32)


@functools.lru_cache(maxsize=64)
def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output position of torch's legacy ``mode='nearest'`` resize, ``[n_out]`` int.

    As ``upsample_nearest`` computes it: equal sizes are the identity, an exact doubling is ``i >> 1``, else
    ``min(floor(i * scale), n_in - 1)`` with ``scale = float(n_in) / n_out`` and the product in float32.
    """
    i = np.arange(n_out)
    if n_out == n_in:
        return i
    if n_out == 2 * n_in:
        return i >> 1
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(i.astype(np.float32) * scale).astype(np.int64), n_in - 1)


def nearest_resize(images_BxHxWxC: jax.Array, size_hw: tuple[int, int]) -> jax.Array:
    """``F.interpolate(x, size=size_hw)`` with the default (legacy) nearest mode: a gather per axis."""
    _, h, w, _ = images_BxHxWxC.shape
    x = images_BxHxWxC
    if size_hw[0] != h:
        x = jnp.take(x, jnp.asarray(nearest_index(h, size_hw[0])), axis=1)
    if size_hw[1] != w:
        x = jnp.take(x, jnp.asarray(nearest_index(w, size_hw[1])), axis=2)
    return x


def l2_normalize(v_BxD: jax.Array) -> jax.Array:
    """``F.normalize(v, dim=1)``: ``v / max(||v||_2, 1e-12)`` per row."""
    return v_BxD / jnp.maximum(jnp.linalg.norm(v_BxD, axis=-1, keepdims=True), NORM_EPS)


def moco_embed(variables, images_BxHxWxC: jax.Array, *, dtype: Any = jnp.float32) -> jax.Array:
    """e4e's ``MocoLoss.extract_feats``: unit-norm features ``[B, 2048]`` of images in [-1, 1] (any size)."""
    x = nearest_resize(images_BxHxWxC, (INPUT_SIZE, INPUT_SIZE))
    return l2_normalize(MocoResNet50(dtype=dtype).apply(variables, x))


class MocoLossOutput(NamedTuple):
    """What e4e's ``MocoLoss.forward`` returns: the loss, ``sim_improvement`` and the per-sample logs.

    Attributes:
      loss: ``mean(1 - diff_target)``, the value e4e adds to its total loss (times ``id_lambda``).
      sim_improvement: ``mean(diff_target - diff_views)``, logged as ``id_improve``.
      diff_target_B, diff_input_B, diff_views_B: per-sample dots ``f(y_hat)·f(y)``, ``f(y_hat)·f(x)``,
        ``f(y)·f(x)`` (e4e's ``id_logs``).
    """

    loss: jax.Array
    sim_improvement: jax.Array
    diff_target_B: jax.Array
    diff_input_B: jax.Array
    diff_views_B: jax.Array


def moco_loss_from_features(
    y_hat_feats_BxD: jax.Array, y_feats_BxD: jax.Array, x_feats_BxD: jax.Array
) -> MocoLossOutput:
    """:func:`moco_loss` on features already extracted (unit rows); no gradient flows through ``y_feats``."""
    y_feats_BxD = jax.lax.stop_gradient(y_feats_BxD)
    diff_target = jnp.sum(y_hat_feats_BxD * y_feats_BxD, axis=-1)
    diff_input = jnp.sum(y_hat_feats_BxD * x_feats_BxD, axis=-1)
    diff_views = jnp.sum(y_feats_BxD * x_feats_BxD, axis=-1)
    return MocoLossOutput(
        loss=jnp.mean(1.0 - diff_target),
        sim_improvement=jnp.mean(diff_target - diff_views),
        diff_target_B=diff_target,
        diff_input_B=diff_input,
        diff_views_B=diff_views,
    )


def moco_loss(
    embed: Callable[[jax.Array], jax.Array], y_hat_BxHxWxC: jax.Array, y_BxHxWxC: jax.Array, x_BxHxWxC: jax.Array
) -> MocoLossOutput:
    """e4e's ``MocoLoss.forward(y_hat, y, x)``: reconstruction ``y_hat``, target ``y``, encoder input ``x``.

    ``embed`` is the network, images -> unit features: ``moco_identity(variables)`` (an
    :class:`IdentityEmbedder` is callable), or ``functools.partial(moco_embed, variables)`` inside a jitted
    function. The three batches go through it as one batch (one call, one compile; no layer mixes samples).
    """
    b = y_hat_BxHxWxC.shape[0]
    if not y_hat_BxHxWxC.shape == y_BxHxWxC.shape == x_BxHxWxC.shape:
        raise ValueError(f"y_hat, y and x differ in shape: {y_hat_BxHxWxC.shape}, {y_BxHxWxC.shape}, {x_BxHxWxC.shape}")
    feats = embed(jnp.concatenate([y_hat_BxHxWxC, y_BxHxWxC, x_BxHxWxC]))
    return moco_loss_from_features(feats[:b], feats[b : 2 * b], feats[2 * b :])


def moco_identity(variables, *, dtype: Any = jnp.float32) -> IdentityEmbedder:
    """The MoCo v2 trunk in the engine's :class:`IdentityEmbedder` role (the engine's ID term is then
    ``1 - f(G(w))·f(target)``, the per-image ``MocoLoss`` with the target as ``y``)."""
    return IdentityEmbedder(name=KIND, apply=_embed_fn(dtype), variables=variables)


@functools.lru_cache(maxsize=None)
def _embed_fn(dtype: Any):
    """One ``apply`` per dtype, so that engines closing over it as a static argument compile once."""
    return functools.partial(moco_embed, dtype=dtype)

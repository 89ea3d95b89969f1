"""Image features for the realism score (Kynkäänniemi et al. 2019) of edited images.

Both extractors take generator images (NHWC, RGB, [-1, 1], any size), resize them to 224x224 (area average
when shrinking, bilinear when growing), normalise them as ImageNet VGG16 expects (LPIPS's ScalingLayer is
exactly ``((x + 1) / 2 - mean) / std`` with the ImageNet mean and std) and run torchvision's VGG16 trunk:

* ``vgg16_fc2`` (the official feature): trunk -> 2x2 max-pool -> 7x7 map -> NCHW flatten -> fc1 + ReLU ->
  fc2 + ReLU, 4096-d. Needs the full torchvision VGG16 weights (``vgg16-397923af.pth``; read without torch
  and without executing code), given as ``realism.vgg16_weights`` in the evaluation config.
* ``substitute:lpips_vgg16_relu5_3_mean`` (the SUBSTITUTE used when no full VGG16 weights are given): the
  relu5_3 tap of the same trunk, averaged over space, 512-d, with the real ImageNet VGG16 conv weights that
  ship with LPIPS (the classifier layers are not in that file). Realism scores computed on it are NOT
  comparable with the paper's numbers; every output of the evaluation says which feature it used.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from magec_jax.errors import FileFormatError
from magec_jax.models.lpips import SCALE, SHIFT, VGG16Features
from magec_jax.models.resize import resize_images

INPUT_SIZE = 224
FC2 = "vgg16_fc2"
SUBSTITUTE = "substitute:lpips_vgg16_relu5_3_mean"


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """A feature network for the realism score.

    Attributes:
      name: ``vgg16_fc2`` or ``substitute:lpips_vgg16_relu5_3_mean``.
      description: one line for reports.
      apply: ``(variables, images_BxHxWxC) -> features_BxF`` float32.
      variables: its weights.
    """

    name: str
    description: str
    apply: Callable[[Any, jax.Array], jax.Array]
    variables: Any

    @property
    def substitute(self) -> bool:
        return self.name != FC2


def _vgg_input(images_BxHxWxC: jax.Array) -> jax.Array:
    x = resize_images(images_BxHxWxC.astype(jnp.float32), (INPUT_SIZE, INPUT_SIZE))
    shift = jnp.asarray(SHIFT, jnp.float32).reshape(1, 1, 1, 3)
    scale = jnp.asarray(SCALE, jnp.float32).reshape(1, 1, 1, 3)
    return (x - shift) / scale


class VGG16FC2(nn.Module):
    """torchvision ``vgg16`` up to the second classifier ReLU (``classifier.4``), eval mode (no dropout).

    Parameter names mirror torchvision: ``features/<N>`` (``features.N``), ``classifier_0``
    (``classifier.0``) and ``classifier_3`` (``classifier.3``). ``fc_width`` is 4096 for the real network.
    """

    fc_width: int = 4096

    @nn.compact
    def __call__(self, x_Bx224x224x3: jax.Array) -> jax.Array:
        relu5_3 = VGG16Features(name="features")(x_Bx224x224x3)[-1]  # [B, 14, 14, 512]
        pooled_Bx7x7x512 = nn.max_pool(relu5_3, (2, 2), strides=(2, 2), padding="VALID")
        h = pooled_Bx7x7x512.reshape(pooled_Bx7x7x512.shape[0], -1)  # NHWC flatten; see the converter
        h = nn.relu(nn.Dense(self.fc_width, name="classifier_0")(h))
        return nn.relu(nn.Dense(self.fc_width, name="classifier_3")(h))


def _fc2_apply(fc_width: int) -> Callable[[Any, jax.Array], jax.Array]:
    model = VGG16FC2(fc_width=fc_width)
    return lambda variables, images: model.apply(variables, _vgg_input(images))


def _relu5_3_mean(variables: Any, images_BxHxWxC: jax.Array) -> jax.Array:
    relu5_3 = VGG16Features().apply(variables, _vgg_input(images_BxHxWxC))[-1]
    return jnp.mean(relu5_3, axis=(1, 2))


def substitute_extractor(lpips_variables: Mapping[str, Any]) -> FeatureExtractor:
    """The substitute feature on the LPIPS-VGG16 trunk weights (``lpips_variables['params']['features']``)."""
    trunk = {"params": lpips_variables["params"]["features"]}
    return FeatureExtractor(
        name=SUBSTITUTE,
        description="SUBSTITUTE feature: spatial mean of VGG16 relu5_3 (LPIPS trunk weights, 224x224 input), "
        "not the paper's VGG16 fc2; realism values are not comparable with the paper's",
        apply=_relu5_3_mean,
        variables=trunk,
    )


# ---- full VGG16 weights --------------------------------------------------------------------------------------


def _conv(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _fc1_from_nchw(a: np.ndarray) -> np.ndarray:
    """``classifier.0.weight`` ``[out, 512*7*7]`` (input index c*49 + y*7 + x) -> Dense kernel over the NHWC
    flatten ``[7*7*512, out]``."""
    out = a.shape[0]
    return a.reshape(out, 512, 7, 7).transpose(2, 3, 1, 0).reshape(7 * 7 * 512, out)


_RULES = (
    (r"features\.(\d+)\.weight", r"params/features/\1/kernel", _conv),
    (r"features\.(\d+)\.bias", r"params/features/\1/bias", lambda a: a),
    (r"classifier\.0\.weight", "params/classifier_0/kernel", _fc1_from_nchw),
    (r"classifier\.0\.bias", "params/classifier_0/bias", lambda a: a),
    (r"classifier\.3\.weight", "params/classifier_3/kernel", lambda a: a.T),
    (r"classifier\.3\.bias", "params/classifier_3/bias", lambda a: a),
    (r"classifier\.6\.(weight|bias)", None, lambda a: a),  # the 1000-way ImageNet head: not used
)


def _target_shapes(fc_width: int) -> dict[str, tuple[int, ...]]:
    shapes = jax.eval_shape(
        lambda k: VGG16FC2(fc_width=fc_width).init(k, jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3))), jax.random.key(0)
    )
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        flat["/".join(p.key for p in path)] = tuple(leaf.shape)
    return flat


def vgg16_fc2_from_state_dict(state_dict: Mapping[str, Any], *, source: str = "<in-memory state dict>") -> FeatureExtractor:
    """The fc2 extractor from a torchvision ``vgg16`` state dict of numpy arrays (``features.N.*``,
    ``classifier.{0,3,6}.*``); every tensor must fit and every layer be filled."""
    from ports.loss_nets import apply_rules

    fc1 = state_dict.get("classifier.0.weight")
    if not isinstance(fc1, np.ndarray) or fc1.ndim != 2:
        names = ", ".join(sorted(map(str, state_dict))[:4])
        raise FileFormatError(source, f"not a torchvision VGG16 state dict: no 2-D 'classifier.0.weight' (found {names})")
    variables = apply_rules([(source, state_dict)], _RULES, _target_shapes(fc1.shape[0]),
                            what="a torchvision VGG16 state dict (features + classifier)")
    variables = jax.tree.map(jnp.asarray, variables)
    return FeatureExtractor(
        name=FC2,
        description=f"VGG16 fc2 (4096-d after ReLU, 224x224 input) from {source}",
        apply=_fc2_apply(fc1.shape[0]),
        variables=variables,
    )


def load_vgg16_fc2(path: str | Path) -> FeatureExtractor:
    """The fc2 extractor from a torchvision VGG16 file (``.pth``; torch zip or legacy, or a numpy pickle)."""
    from ports.loss_nets import read_weights, select_state_dict

    path = Path(path)
    state_dict = select_state_dict(read_weights(path), path, None)
    return vgg16_fc2_from_state_dict(state_dict, source=str(path))


def realism_extractor(vgg16_weights: str, lpips_variables: Mapping[str, Any]) -> FeatureExtractor:
    """fc2 when full VGG16 weights are given, else the documented substitute."""
    return load_vgg16_fc2(vgg16_weights) if vgg16_weights else substitute_extractor(lpips_variables)


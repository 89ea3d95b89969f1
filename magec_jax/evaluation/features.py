"""Image features for the realism score (Kynkäänniemi et al. 2019) of edited images.

Both extractors take generator images (NHWC, RGB, [-1, 1], any size), resize them to 224x224 (area average
when shrinking, bilinear when growing), normalise them as ImageNet VGG16 expects (LPIPS's ScalingLayer is
exactly ``((x + 1) / 2 - mean) / std`` with the ImageNet mean and std) and run torchvision's VGG16 trunk
(:mod:`magec_jax.models.vgg16`; the torchvision weights are converted by ``ports.loss_nets``):

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

import jax
import jax.numpy as jnp

from magec_jax.models import vgg16
from magec_jax.weights import Converted
from ports.loss_nets import convert_vgg16_fc2, convert_vgg16_fc2_state_dict

FC2 = vgg16.KIND
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


def substitute_extractor(lpips_variables: Mapping[str, Any]) -> FeatureExtractor:
    """The substitute feature on the LPIPS-VGG16 trunk weights (``lpips_variables['params']['features']``)."""
    trunk = {"params": lpips_variables["params"]["features"]}
    return FeatureExtractor(
        name=SUBSTITUTE,
        description="SUBSTITUTE feature: spatial mean of VGG16 relu5_3 (LPIPS trunk weights, 224x224 input), "
        "not the paper's VGG16 fc2; realism values are not comparable with the paper's",
        apply=vgg16.relu5_3_mean,
        variables=trunk,
    )


# ---- full VGG16 weights --------------------------------------------------------------------------------------


def _fc2_extractor(converted: Converted, source: str) -> FeatureExtractor:
    model = vgg16.VGG16FC2(fc_width=converted.config["fc_width"])
    return FeatureExtractor(
        name=FC2,
        description=f"VGG16 fc2 (4096-d after ReLU, 224x224 input) from {source}",
        apply=lambda variables, images: model.apply(variables, vgg16.imagenet_input(images)),
        variables=jax.tree.map(jnp.asarray, converted.variables),
    )


def vgg16_fc2_from_state_dict(state_dict: Mapping[str, Any], *, source: str = "<in-memory state dict>") -> FeatureExtractor:
    """The fc2 extractor from a torchvision ``vgg16`` state dict of numpy arrays (``features.N.*``,
    ``classifier.{0,3,6}.*``); every tensor must fit and every layer be filled."""
    return _fc2_extractor(convert_vgg16_fc2_state_dict(state_dict, source=source), source)


def load_vgg16_fc2(path: str | Path) -> FeatureExtractor:
    """The fc2 extractor from a torchvision VGG16 file (``.pth``; torch zip or legacy, or a numpy pickle)."""
    return _fc2_extractor(convert_vgg16_fc2(path), str(path))


def realism_extractor(vgg16_weights: str, lpips_variables: Mapping[str, Any]) -> FeatureExtractor:
    """fc2 when full VGG16 weights are given, else the documented substitute."""
    return load_vgg16_fc2(vgg16_weights) if vgg16_weights else substitute_extractor(lpips_variables)


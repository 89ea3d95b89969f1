"""The offline face models (Human's faceres and emotion) in the two roles the inversion engine uses.

* :func:`faceres_identity`: the ID-loss network, the faceres 1024-d descriptor, L2-normalised. A stand-in
  for IR-SE50/ArcFace, whose weights are not available offline.
* :func:`face_attribute_descriptor`: MAGEC's descriptor F with K = 3 binary attributes (BCE), named as the
  CelebA attributes they stand for::

      Male     = gender_logit - logit(male_prob)
      Young    = (age_threshold - expected_age) / age_scale
      Smiling  = log P(happy) - log(1 - P(happy)) - logit(happy_prob)

  ``expected_age = sum_i i * P(age = i)`` over faceres's 100 age bins, and the Smiling logit is computed
  stably from the emotion logits as ``z_happy - logsumexp(z_others)``. Each logit is positive exactly when
  the attribute is predicted present. The thresholds are fields of :class:`FaceAttributeThresholds`, with
  defaults that are reasonable but uncalibrated: Male at P(male) = 0.5 (Human's rule), Young below 35
  years, Smiling at P(happy) = 0.5.

Both roles take project images (RGB in [-1, 1], NHWC, any resolution) and apply the preprocessing recipes
of :mod:`magec_jax.models.faceres` and :mod:`magec_jax.models.emotion` inside ``apply``, so each is one
differentiable, jit/vmap-friendly function of ``(variables, images)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from magec_jax.models import emotion, faceres
from magec_jax.models.interfaces import Descriptor, IdentityEmbedder

ATTRIBUTE_NAMES = ("Male", "Young", "Smiling")
_HAPPY = emotion.LABELS.index("happy")


@dataclasses.dataclass(frozen=True)
class FaceAttributeThresholds:
    """Decision thresholds of the face attributes; to be calibrated on labelled data.

    Attributes:
      male_prob: P(male) at which Male flips (Human: 0.5; upstream HSE code: 0.6).
      age_threshold: Young when the expected age (years) is below this.
      age_scale: years per unit of the Young logit (its softness).
      happy_prob: P(happy) at which Smiling flips.
    """

    male_prob: float = 0.5
    age_threshold: float = 35.0
    age_scale: float = 5.0
    happy_prob: float = 0.5


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _faceres_embedding(variables: Any, images_BxHxWx3: jax.Array, *, box: faceres.Box | None, dtype: Any) -> jax.Array:
    """Unit-norm faceres descriptors ``[B, 1024]`` of project images."""
    d_BxD = faceres.apply(variables, faceres.preprocess(images_BxHxWx3, box=box), dtype=dtype)["descriptor"]
    return d_BxD * jax.lax.rsqrt(jnp.maximum(jnp.sum(d_BxD * d_BxD, axis=-1, keepdims=True), 1e-12))


def faceres_identity(
    variables: Any, *, box: faceres.Box | None = faceres.FACE_BOX, dtype: Any = jnp.float32
) -> IdentityEmbedder:
    """The faceres descriptor as the identity network of the ID loss.

    Args:
      variables: faceres variables (``Converted.variables`` of ``ports.tfjs.convert_faceres``).
      box: the face crop as image fractions (``faceres.FACE_BOX`` suits aligned FFHQ/CelebA-HQ frames);
        None feeds the whole image (for images that are already a tight face crop).
      dtype: computation dtype of the network (float32, or bfloat16).
    """
    return IdentityEmbedder(
        name="faceres", apply=_embedding_fn(box, dtype), variables=variables
    )


@functools.lru_cache(maxsize=None)
def _embedding_fn(box: faceres.Box | None, dtype: Any):
    """One ``apply`` per setting, so that engines closing over it as a static argument compile once."""
    return functools.partial(_faceres_embedding, box=box, dtype=dtype)


def happy_log_odds(emotion_logits_Bx7: jax.Array) -> jax.Array:
    """``log P(happy) - log(1 - P(happy))`` from the emotion logits, stably: ``z_happy - logsumexp(z_others)``."""
    z = emotion_logits_Bx7
    others_Bx6 = jnp.concatenate([z[:, :_HAPPY], z[:, _HAPPY + 1 :]], axis=-1)
    return z[:, _HAPPY] - jax.nn.logsumexp(others_Bx6, axis=-1)


def _attribute_logits(
    variables: Any,
    images_BxHxWx3: jax.Array,
    *,
    thresholds: FaceAttributeThresholds,
    box: faceres.Box | None,
    dtype: Any,
) -> jax.Array:
    """``[B, 3]`` logits of (Male, Young, Smiling) for project images."""
    face = faceres.apply(variables["faceres"], faceres.preprocess(images_BxHxWx3, box=box), dtype=dtype)
    z_Bx7 = emotion.apply(variables["emotion"], emotion.preprocess(images_BxHxWx3, box=box), dtype=dtype)["logits"]
    male_B = face["gender_logit"][:, 0] - _logit(thresholds.male_prob)
    young_B = (thresholds.age_threshold - face["age_expected"]) / thresholds.age_scale
    smiling_B = happy_log_odds(z_Bx7) - _logit(thresholds.happy_prob)
    return jnp.stack([male_B, young_B, smiling_B], axis=-1)


def face_attribute_descriptor(
    faceres_variables: Any,
    emotion_variables: Any,
    *,
    thresholds: FaceAttributeThresholds = FaceAttributeThresholds(),
    box: faceres.Box | None = faceres.FACE_BOX,
    dtype: Any = jnp.float32,
) -> Descriptor:
    """faceres + emotion as MAGEC's descriptor F: logits of ``ATTRIBUTE_NAMES``, trained-loss ``"bce"``.

    Args:
      faceres_variables: from ``ports.tfjs.convert_faceres``.
      emotion_variables: from ``ports.tfjs.convert_emotion``.
      thresholds: the attributes' decision thresholds.
      box: the face crop as image fractions, or None for the whole image (see :func:`faceres_identity`).
      dtype: computation dtype of both networks.

    Returns:
      A :class:`Descriptor` whose ``variables`` are ``{"faceres": ..., "emotion": ...}``.
    """
    return Descriptor(
        name="faceres+emotion",
        attribute_names=ATTRIBUTE_NAMES,
        loss="bce",
        apply=_logits_fn(thresholds, box, dtype),
        variables={"faceres": faceres_variables, "emotion": emotion_variables},
    )


@functools.lru_cache(maxsize=None)
def _logits_fn(thresholds: FaceAttributeThresholds, box: faceres.Box | None, dtype: Any):
    """One ``apply`` per setting, so that engines closing over it as a static argument compile once."""
    return functools.partial(_attribute_logits, thresholds=thresholds, box=box, dtype=dtype)


def calibrate_thresholds(
    faceres_variables: Any,
    images_NxHxWx3: Any,
    *,
    box: faceres.Box | None = faceres.FACE_BOX,
    young_fraction: float = 0.5,
    male_prob: float = 0.5,
    happy_prob: float = 0.5,
    batch: int = 32,
) -> FaceAttributeThresholds:
    """Thresholds for a domain: Young is set so that ``young_fraction`` of ``images`` (real photographs of the
    domain, [-1, 1]) count as young (the quantile of faceres's expected age), which keeps the attribute
    informative whatever the age spread of the data; Male and Smiling keep the networks' own decision rules
    (``male_prob``, ``happy_prob``), which need no calibration data of their own."""
    fn = jax.jit(lambda v, x: faceres.apply(v, faceres.preprocess(x, box=box))["age_expected"])
    ages = jnp.concatenate([fn(faceres_variables, jnp.asarray(images_NxHxWx3[i:i + batch]))
                            for i in range(0, len(images_NxHxWx3), batch)])
    return FaceAttributeThresholds(
        male_prob=male_prob,
        age_threshold=float(jnp.quantile(ages, young_fraction)),
        age_scale=FaceAttributeThresholds.age_scale,
        happy_prob=happy_prob,
    )

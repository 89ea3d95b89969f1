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
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from magec_jax.errors import MagecError
from magec_jax.models import emotion, faceres
from magec_jax.models.interfaces import Descriptor, IdentityEmbedder

ATTRIBUTE_NAMES = ("Male", "Young", "Smiling")
SCORE_NAMES = ("gender_logit", "expected_age", "happy_log_odds")
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


def attribute_scores(
    variables: Any, images_BxHxWx3: jax.Array, *, box: faceres.Box | None, dtype: Any = jnp.float32
) -> jax.Array:
    """``[B, 3]`` threshold-free scores, in the order of ``SCORE_NAMES``: faceres's gender logit, its expected
    age in years, and the emotion model's happy log-odds. The descriptor's logits are affine in them
    (:func:`logits_from_scores`), so thresholds can be calibrated on stored scores without running the networks."""
    face = faceres.apply(variables["faceres"], faceres.preprocess(images_BxHxWx3, box=box), dtype=dtype)
    z_Bx7 = emotion.apply(variables["emotion"], emotion.preprocess(images_BxHxWx3, box=box), dtype=dtype)["logits"]
    return jnp.stack([face["gender_logit"][:, 0], face["age_expected"], happy_log_odds(z_Bx7)], axis=-1)


def logits_from_scores(scores_Bx3: jax.Array, thresholds: FaceAttributeThresholds) -> jax.Array:
    """``[B, 3]`` logits of ``ATTRIBUTE_NAMES`` from :func:`attribute_scores` (the module docstring's formulas)."""
    male_B = scores_Bx3[:, 0] - _logit(thresholds.male_prob)
    young_B = (thresholds.age_threshold - scores_Bx3[:, 1]) / thresholds.age_scale
    smiling_B = scores_Bx3[:, 2] - _logit(thresholds.happy_prob)
    return jnp.stack([male_B, young_B, smiling_B], axis=-1)


def _attribute_logits(
    variables: Any,
    images_BxHxWx3: jax.Array,
    *,
    thresholds: FaceAttributeThresholds,
    box: faceres.Box | None,
    dtype: Any,
) -> jax.Array:
    """``[B, 3]`` logits of (Male, Young, Smiling) for project images."""
    return logits_from_scores(attribute_scores(variables, images_BxHxWx3, box=box, dtype=dtype), thresholds)


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


def label_rates(scores_Nx3: np.ndarray, thresholds: FaceAttributeThresholds) -> np.ndarray:
    """``[3]`` fraction of samples labelled present (logit > 0) for each of ``ATTRIBUTE_NAMES``."""
    return np.asarray(logits_from_scores(jnp.asarray(scores_Nx3, jnp.float32), thresholds) > 0).mean(axis=0)


def thresholds_for_rates(
    scores_Nx3: np.ndarray, rates: tuple[float, float, float], *, age_scale: float = FaceAttributeThresholds.age_scale
) -> FaceAttributeThresholds:
    """Thresholds under which a fraction ``rates[k]`` of the samples behind ``scores`` (:func:`attribute_scores`)
    is labelled with attribute k: each threshold is the matching quantile of its score (quantile matching).

    Used to give generated samples the label rates of the real photographs the generator imitates, when the
    face models read generated faces differently from real ones (``tools/build_demo.py``).

    Raises:
      MagecError: a rate outside (0, 1), or fewer than two samples.
    """
    scores = np.asarray(scores_Nx3, np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(ATTRIBUTE_NAMES) or len(scores) < 2:
        raise MagecError(f"threshold calibration needs scores of shape [N >= 2, 3], got {scores.shape}")
    if not all(0.0 < r < 1.0 for r in rates) or len(rates) != len(ATTRIBUTE_NAMES):
        raise MagecError(f"threshold calibration: label rates must be three numbers in (0, 1), got {rates}")
    male_rate, young_rate, smiling_rate = rates
    return FaceAttributeThresholds(
        male_prob=_sigmoid(float(np.quantile(scores[:, 0], 1.0 - male_rate))),
        age_threshold=float(np.quantile(scores[:, 1], young_rate)),
        age_scale=age_scale,
        happy_prob=_sigmoid(float(np.quantile(scores[:, 2], 1.0 - smiling_rate))),
    )


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@functools.lru_cache(maxsize=None)
def scores_fn(box: faceres.Box | None) -> Callable[[Any, jax.Array], jax.Array]:
    """``(variables, images_BxHxWx3) -> scores_Bx3`` for one face box; one function per box, so it compiles once."""
    return functools.partial(attribute_scores, box=box)

"""Label rates of the faceres + emotion descriptor on real and generated faces, and thresholds that match them.

The face models were trained on real photographs. On a small generator's samples they may read attributes
differently (resolution, crop, the generator's domain), so that F's label rates on generated samples, which
LinkNet and the boundaries learn from, drift away from the rates on the photographs the generator imitates.
This module measures that, on threshold-free scores (:func:`~magec_jax.models.face_attributes.attribute_scores`:
gender logit, expected age, happy log-odds), and calibrates the thresholds by quantile matching
(:func:`~magec_jax.models.face_attributes.thresholds_for_rates`).

    scores = photo_scores(variables, photos_NxHxWx3, box=None)             # real photographs
    gen = generated_scores(cfg, gen_variables, variables, key=..., num_samples=..., ...)
    rates = label_rates(scores, thresholds)                                 # F's rates on the photographs
    calibrated = thresholds_for_rates(gen, tuple(rates))                    # the same rates on samples
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from magec_jax.errors import MagecError
from magec_jax.models import faceres, stylegan2
from magec_jax.models.face_attributes import ATTRIBUTE_NAMES, FaceAttributeThresholds, label_rates, scores_fn
from magec_jax.supervision.samples import draw


def photo_scores(variables: Any, photos_NxHxWx3: np.ndarray, *, box: faceres.Box | None,
                 batch_size: int = 32) -> np.ndarray:
    """``[N, 3]`` scores of uint8 RGB photographs (any size; the networks resize), ``batch_size`` per call.

    The last batch is padded by repeating its first photograph, so the function compiles once per size.
    """
    photos = np.asarray(photos_NxHxWx3)
    if photos.ndim != 4 or photos.shape[-1] != 3 or photos.dtype != np.uint8 or not len(photos):
        raise MagecError(f"photo_scores needs uint8 RGB images [N > 0, H, W, 3], got {photos.dtype} {photos.shape}")
    fn = jax.jit(scores_fn(box))
    parts = []
    for start in range(0, len(photos), batch_size):
        batch = photos[start: start + batch_size]
        padded = np.concatenate([batch, np.repeat(batch[:1], batch_size - len(batch), axis=0)])
        parts.append(fn(variables, jnp.asarray(padded, jnp.float32) / 127.5 - 1.0)[: len(batch)])
    return np.asarray(jax.device_get(jnp.concatenate(parts)), np.float64)


def generated_scores(
    cfg: stylegan2.StyleGAN2Config,
    gen_variables: dict,
    variables: Any,
    *,
    key: jax.Array,
    num_samples: int,
    batch_size: int,
    w_avg_D: np.ndarray,
    box: faceres.Box | None,
    per_layer: bool,
    truncation_psi: float = 1.0,
) -> np.ndarray:
    """``[N, 3]`` scores of G's samples ``0 .. N-1`` of stream ``key`` (the supervision job's sampler:
    one w, or one per layer when ``per_layer``), rendered with const noise and clipped to [-1, 1]."""
    _, scores = draw(cfg, scores_fn(box), gen_variables, variables, key=key, start=0, count=num_samples,
                     batch_size=batch_size, w_avg_D=w_avg_D, truncation_psi=truncation_psi, per_layer=per_layer)
    return np.asarray(scores, np.float64)


def score_summary(scores_Nx3: np.ndarray, thresholds: FaceAttributeThresholds) -> dict[str, Any]:
    """JSON-ready summary of one set of scores: N, the label rate of each attribute under ``thresholds``,
    and the 10/50/90% quantiles of each raw score (P(male) and P(happy) as probabilities)."""
    scores = np.asarray(scores_Nx3, np.float64)
    rates = label_rates(scores, thresholds)
    probs = {"p_male": 1 / (1 + np.exp(-scores[:, 0])), "expected_age": scores[:, 1],
             "p_happy": 1 / (1 + np.exp(-scores[:, 2]))}
    return dict(
        N=int(len(scores)),
        label_rates={name: float(r) for name, r in zip(ATTRIBUTE_NAMES, rates)},
        quantiles={name: [float(q) for q in np.quantile(v, (0.1, 0.5, 0.9))] for name, v in probs.items()},
    )

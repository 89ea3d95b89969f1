"""The paper's per-image editing metrics and their aggregation (METHOD.md, "Evaluation"; paper section 4.2).

* Edit-Consistency Score (paper eq. 4): with ``w = p(x)``, ``x_edit = G(e(w))``, ``w' = p(x_edit)`` and
  ``x_cyc = G(e^-1(w'))``::

      ecs = 2 * LPIPS(G(w), x_cyc) / (LPIPS(G(w), x_edit) + LPIPS(x_edit, x_cyc))

  0 is perfect; above 1 the cycle drifts further than either edit moved. ECS (eq. 5) is its mean over the
  images that lack the edit's target attribute according to the descriptor F (on the real image x).
* Realism (Kynkäänniemi et al. 2019): each edited image's realism against the k-NN manifold of the real
  images' features (:func:`magec_jax.metrics.realism.realism_scores`, official semantics).
* Improved-target score ``t = P_F(target | x_edit) - P_F(target | G(w))``: how much F's probability of the
  targeted attribute rose with the edit (before = the reconstruction, which the edit starts from).

Two latent-space views of the same cycle (ours, not the paper's; :func:`latent_cycle`) say where an ecs comes
from: how much of the edit the re-projection ``w'`` recovers along the edit's direction, and how far ``w'``
lands from ``e(w)``. :func:`w_spread` measures how far a W+ latent strays from W (its layers' spread).
"""

from __future__ import annotations

import jax
import numpy as np

from magec_jax.models.interfaces import LossKind


def edit_consistency(lpips_gw_cyc: np.ndarray, lpips_gw_edit: np.ndarray, lpips_edit_cyc: np.ndarray) -> np.ndarray:
    """Per-image ecs from the three LPIPS distances (float64). A zero denominator (the edit did not move the
    image and the cycle returned exactly) gives NaN: the score is undefined there."""
    d3, d1, d2 = (np.asarray(v, np.float64) for v in (lpips_gw_cyc, lpips_gw_edit, lpips_edit_cyc))
    denominator = d1 + d2
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, 2.0 * d3 / safe, np.nan)


def improved_target(p_before: np.ndarray, p_after: np.ndarray) -> np.ndarray:
    """Per-image ``t = p_after - p_before`` (float64)."""
    return np.asarray(p_after, np.float64) - np.asarray(p_before, np.float64)


def attribute_probabilities(logits_BxK: np.ndarray, loss: LossKind) -> np.ndarray:
    """F's probabilities: independent sigmoids for ``bce``, one softmax for ``softmax_ce``."""
    logits = np.asarray(logits_BxK, np.float32)
    if loss == "bce":
        return np.asarray(jax.nn.sigmoid(logits))
    if loss == "softmax_ce":
        return np.asarray(jax.nn.softmax(logits, axis=-1))
    raise ValueError(f"unknown descriptor loss {loss!r}")


def mean_or_nan(values: np.ndarray) -> float:
    """The mean of the finite values (NaN when there are none)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def latent_cycle(w_NxLxD: np.ndarray, w_edit_NxLxD: np.ndarray, w_again_NxLxD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The edit cycle in latent space, per image (float64), with ``d = e(w) - w`` (an additive edit):

    * ``recovered = <w' - w, d> / |d|^2``: the fraction of the edit the re-projection ``w'`` of ``x_edit``
      reproduces along the edit's direction (1: all of it);
    * ``cycle_error = |w' - e(w)| / |d|``: how far ``w'`` lands from the edited latent, in units of the edit
      (0: the inverse edit returns exactly to ``w``; Frobenius norms over layers and channels).

    NaN where the edit is zero."""
    w, w_edit, w_again = (np.asarray(a, np.float64) for a in (w_NxLxD, w_edit_NxLxD, w_again_NxLxD))
    if not w.shape == w_edit.shape == w_again.shape or w.ndim != 3:
        raise ValueError(f"latent_cycle needs three [N, L, D] arrays of one shape, got {w.shape}, {w_edit.shape}, "
                         f"{w_again.shape}")
    d = (w_edit - w).reshape(len(w), -1)
    norm2 = np.sum(d * d, axis=1)
    ok = norm2 > 0
    safe = np.where(ok, norm2, 1.0)
    recovered = np.sum((w_again - w).reshape(len(w), -1) * d, axis=1) / safe
    error = np.linalg.norm((w_again - w_edit).reshape(len(w), -1), axis=1) / np.sqrt(safe)
    return np.where(ok, recovered, np.nan), np.where(ok, error, np.nan)


def w_spread(w_NxLxD: np.ndarray) -> np.ndarray:
    """How far each W+ latent is from W, per image (float64): the root mean square over layers of
    ``|w_l - mean_l w|`` (0 for a latent with the same w on every layer)."""
    w = np.asarray(w_NxLxD, np.float64)
    if w.ndim != 3:
        raise ValueError(f"w_spread needs [N, L, D] latents, got shape {w.shape}")
    deviation = w - w.mean(axis=1, keepdims=True)
    return np.sqrt(np.mean(np.sum(deviation * deviation, axis=2), axis=1))

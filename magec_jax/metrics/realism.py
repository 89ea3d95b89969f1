"""Realism score and k-NN precision/recall (Kynkäänniemi et al., "Improved Precision and Recall Metric for
Assessing Generative Models", NeurIPS 2019), as the official code computes them.

Reproduces ``ManifoldEstimator`` of kynkaat/improved-precision-and-recall-metric (``precision_recall.py``);
the golden fixture is ``shared/fixtures/realism/``. Semantics, all on float32 features:

* Distances are SQUARED Euclidean, by the norm expansion ``D(u, v) = max(|u|^2 - 2 u.v + |v|^2, 0)``.
* The radius ``r_i`` of reference i is the element at index k of its ascending row ``D(ref_i, all refs)``;
  index 0 is (about) the self-distance, so ``r_i`` is the squared distance to the k-th nearest other
  reference.
* ``clamp_to_percentile=p``: with ``t = np.percentile(r, p)`` (linear interpolation), every radius strictly
  above ``t`` is set to 0 (not to t): that reference leaves the manifold. The StyleGAN realism experiment
  (and MAGEC) uses k = 3, p = 50.
* ``realism(x) = max_i r_i / (D(x, ref_i) + eps)``, a ratio of squared distances (roughly the square of the
  paper's formula); pruned references contribute 0. Above 1 reads as "realistic".
* ``in_manifold(x) = any_i D(x, ref_i) <= r_i`` and ``nearest_index(x) = argmin_i D(x, ref_i)`` (over all
  references, pruned or not; the first index on ties).
* precision = mean in_manifold of the eval points in the unclamped reference manifold; recall = mean
  in_manifold of the references in the unclamped eval manifold.

The distance blocks run in JAX (on the default device, matmul precision pinned to highest) over batches of
``row_batch_size`` rows against all columns, so memory is about ``row_batch_size * num_columns * 4`` bytes
per temporary; batches are padded to one shape, so each call compiles once.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_ROW_BATCH_SIZE = 1024


class Manifold(NamedTuple):
    """A k-NN manifold estimate.

    Attributes:
      features_NxF: the points (float32).
      radii_N: squared k-NN radii (float32); 0 where pruned by the clamp.
      threshold: the clamp percentile's value of the unpruned radii, or None without clamping.
    """

    features_NxF: np.ndarray
    radii_N: np.ndarray
    threshold: float | None


class ManifoldScores(NamedTuple):
    """Per-point results of :func:`evaluate` (numpy, ``[B]`` each)."""

    realism: np.ndarray  # float32
    in_manifold: np.ndarray  # int32, 0 or 1
    nearest_index: np.ndarray  # int32


def pairwise_sqdist(u_BxF: jax.Array, v_NxF: jax.Array) -> jax.Array:
    """Squared distances ``[B, N]`` by the norm expansion, clipped at 0 (as the official DistanceBlock)."""
    norm_u_Bx1 = jnp.sum(u_BxF * u_BxF, axis=1, keepdims=True)
    norm_v_1xN = jnp.sum(v_NxF * v_NxF, axis=1)[None, :]
    uv_BxN = jnp.matmul(u_BxF, v_NxF.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(norm_u_Bx1 - 2.0 * uv_BxN + norm_v_1xN, 0.0)


@functools.partial(jax.jit, static_argnames="k")
def _kth_smallest_block(rows_BxF: jax.Array, cols_NxF: jax.Array, k: int) -> jax.Array:
    """Element at index k of each ascending-sorted row of ``D(rows, cols)``: ``[B]``."""
    neg_smallest_BxK1, _ = jax.lax.top_k(-pairwise_sqdist(rows_BxF, cols_NxF), k + 1)
    return -neg_smallest_BxK1[:, k]


@jax.jit
def _evaluate_block(
    rows_BxF: jax.Array, refs_NxF: jax.Array, radii_N: jax.Array, eps: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Realism, in-manifold flag and nearest reference of each row."""
    d_BxN = pairwise_sqdist(rows_BxF, refs_NxF)
    radii_1xN = radii_N[None, :]
    realism_B = jnp.max(radii_1xN / (d_BxN + eps), axis=1)
    in_manifold_B = jnp.any(d_BxN <= radii_1xN, axis=1).astype(jnp.int32)
    nearest_B = jnp.argmin(d_BxN, axis=1).astype(jnp.int32)
    return realism_B, in_manifold_B, nearest_B


def _by_row_batches(block: Callable, rows_BxF: np.ndarray, row_batch_size: int, *args) -> tuple[np.ndarray, ...]:
    """Applies ``block(rows, *args)`` to row batches (the last one padded) and concatenates the outputs."""
    if row_batch_size < 1:
        raise ValueError(f"row_batch_size must be positive, got {row_batch_size}")
    num_rows = rows_BxF.shape[0]
    size = min(row_batch_size, num_rows)
    parts = []
    for begin in range(0, num_rows, size):
        batch = rows_BxF[begin : begin + size]
        pad = size - batch.shape[0]
        if pad:
            batch = np.concatenate([batch, np.zeros((pad, batch.shape[1]), batch.dtype)])
        out = block(jnp.asarray(batch), *args)
        parts.append(tuple(np.asarray(o)[: size - pad] for o in (out if isinstance(out, tuple) else (out,))))
    return tuple(np.concatenate(column) for column in zip(*parts))


def _as_features(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty [num_points, num_features] array, got shape {x.shape}")
    return x


def fit_manifold(
    features_NxF: np.ndarray,
    *,
    k: int = 3,
    clamp_to_percentile: float | None = 50.0,
    row_batch_size: int = DEFAULT_ROW_BATCH_SIZE,
) -> Manifold:
    """Estimates the k-NN manifold of a point set (the official ``ManifoldEstimator`` constructor).

    Args:
      features_NxF: reference features; needs N > k.
      k: neighbourhood size.
      clamp_to_percentile: prune (zero) the radii above this percentile; None keeps all.
      row_batch_size: rows per distance block.
    """
    features = _as_features(features_NxF, "features_NxF")
    if not 0 < k < features.shape[0]:
        raise ValueError(f"k={k} needs more than k points, got {features.shape[0]}")
    (radii,) = _by_row_batches(
        functools.partial(_kth_smallest_block, k=k), features, row_batch_size, jnp.asarray(features)
    )
    radii = radii.astype(np.float32)
    threshold = None
    if clamp_to_percentile is not None:
        threshold = np.percentile(radii, clamp_to_percentile)
        radii[radii > threshold] = 0
        threshold = float(threshold)
    return Manifold(features_NxF=features, radii_N=radii, threshold=threshold)


def evaluate(
    manifold: Manifold,
    eval_features_BxF: np.ndarray,
    *,
    eps: float = 1e-5,
    row_batch_size: int = DEFAULT_ROW_BATCH_SIZE,
) -> ManifoldScores:
    """Realism, in-manifold predictions and nearest reference of each eval point (``evaluate`` upstream)."""
    rows = _as_features(eval_features_BxF, "eval_features_BxF")
    if rows.shape[1] != manifold.features_NxF.shape[1]:
        raise ValueError(f"eval features have {rows.shape[1]} dims, the manifold {manifold.features_NxF.shape[1]}")
    realism, in_manifold, nearest = _by_row_batches(
        _evaluate_block, rows, row_batch_size, jnp.asarray(manifold.features_NxF), jnp.asarray(manifold.radii_N),
        jnp.float32(eps),
    )
    return ManifoldScores(realism=realism, in_manifold=in_manifold, nearest_index=nearest)


def realism_scores(
    ref_features_NxF: np.ndarray,
    eval_features_BxF: np.ndarray,
    *,
    k: int = 3,
    clamp_to_percentile: float | None = 50.0,
    row_batch_size: int = DEFAULT_ROW_BATCH_SIZE,
) -> ManifoldScores:
    """The realism score as MAGEC reports it (k = 3, radii pruned at the 50th percentile by default)."""
    manifold = fit_manifold(
        ref_features_NxF, k=k, clamp_to_percentile=clamp_to_percentile, row_batch_size=row_batch_size
    )
    return evaluate(manifold, eval_features_BxF, row_batch_size=row_batch_size)


def knn_precision_recall(
    ref_features_NxF: np.ndarray,
    eval_features_BxF: np.ndarray,
    *,
    k: int = 3,
    row_batch_size: int = DEFAULT_ROW_BATCH_SIZE,
) -> tuple[float, float]:
    """k-NN precision and recall (``knn_precision_recall_features`` upstream; no clamping)."""
    refs = fit_manifold(ref_features_NxF, k=k, clamp_to_percentile=None, row_batch_size=row_batch_size)
    evals = fit_manifold(eval_features_BxF, k=k, clamp_to_percentile=None, row_batch_size=row_batch_size)
    precision = evaluate(refs, evals.features_NxF, row_batch_size=row_batch_size).in_manifold.mean()
    recall = evaluate(evals, refs.features_NxF, row_batch_size=row_batch_size).in_manifold.mean()
    return float(precision), float(recall)

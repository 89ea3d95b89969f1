"""Realism score and k-NN precision/recall: hand-computed 1-D examples and the official code's golden values.

Fixture tolerances (README, from float32-vs-float64 noise of the official code): radii and the clamp
threshold ``rtol=1e-6``, realism ``rtol=1e-5``, unclamped realism ``rtol=2e-5`` (eval points very close to a
reference lose relative precision in the norm expansion), squared distances ``rtol=1e-5``; integer outputs
and precision/recall exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require_shared
from magec_jax.metrics import realism

# 1-D references 0, 1, 3, 7. Squared distances: 0:[0,1,9,49] 1:[1,0,4,36] 3:[9,4,0,16] 7:[49,36,16,0].
REFS_1D = np.array([[0.0], [1.0], [3.0], [7.0]], np.float32)


def test_radii_1d_by_hand():
    m1 = realism.fit_manifold(REFS_1D, k=1, clamp_to_percentile=None)
    np.testing.assert_array_equal(m1.radii_N, [1, 1, 4, 16])
    assert m1.threshold is None
    m2 = realism.fit_manifold(REFS_1D, k=2, clamp_to_percentile=None)
    np.testing.assert_array_equal(m2.radii_N, [9, 4, 9, 36])
    # 50th percentile of [1, 1, 4, 16] is 2.5; radii above it are zeroed (not clamped to 2.5).
    clamped = realism.fit_manifold(REFS_1D, k=1, clamp_to_percentile=50)
    assert clamped.threshold == 2.5
    np.testing.assert_array_equal(clamped.radii_N, [1, 1, 0, 0])


def test_evaluate_1d_by_hand():
    evals = np.array([[2.0], [20.0]], np.float32)  # squared distances: [4, 1, 1, 25] and [400, 361, 289, 169]
    eps = 1e-5
    free = realism.evaluate(realism.fit_manifold(REFS_1D, k=1, clamp_to_percentile=None), evals)
    np.testing.assert_allclose(free.realism, [4 / (1 + eps), 16 / (169 + eps)], rtol=1e-6)
    np.testing.assert_array_equal(free.in_manifold, [1, 0])
    np.testing.assert_array_equal(free.nearest_index, [1, 3])  # first index on the tie at x = 2
    clamped = realism.evaluate(realism.fit_manifold(REFS_1D, k=1, clamp_to_percentile=50), evals)
    np.testing.assert_allclose(clamped.realism, [1 / (1 + eps), 1 / (361 + eps)], rtol=1e-6)
    np.testing.assert_array_equal(clamped.in_manifold, [1, 0])  # 1 <= r=1 at ref 1; pruned refs never count
    assert clamped.in_manifold.dtype == np.int32 and clamped.nearest_index.dtype == np.int32


def test_precision_recall_1d_by_hand():
    # Eval points 2, 2.5, 20: k=1 radii 0.25, 0.25, 306.25. In the ref manifold (radii 1, 1, 4, 16):
    # 2 (1 <= 1 at ref 1) and 2.5 (0.25 <= 4 at ref 3), not 20 -> precision 2/3. Refs in the eval manifold:
    # 3 (0.25 <= 0.25 at 2.5) and 7 (169 <= 306.25 at 20) -> recall 2/4.
    evals = np.array([[2.0], [2.5], [20.0]], np.float32)
    precision, recall = realism.knn_precision_recall(REFS_1D, evals, k=1)
    assert precision == pytest.approx(2 / 3) and recall == 0.5


def test_row_batching_does_not_change_results():
    rng = np.random.default_rng(0)
    refs = rng.standard_normal((50, 8)).astype(np.float32)
    evals = rng.standard_normal((23, 8)).astype(np.float32)
    whole = realism.realism_scores(refs, evals)
    batched = realism.realism_scores(refs, evals, row_batch_size=7)
    np.testing.assert_allclose(batched.realism, whole.realism, rtol=1e-6)
    np.testing.assert_array_equal(batched.in_manifold, whole.in_manifold)
    np.testing.assert_array_equal(batched.nearest_index, whole.nearest_index)


def test_bad_inputs():
    with pytest.raises(ValueError, match="more than k"):
        realism.fit_manifold(REFS_1D, k=4)
    with pytest.raises(ValueError, match="dims"):
        realism.evaluate(realism.fit_manifold(REFS_1D, k=1), np.zeros((2, 3), np.float32))


@pytest.fixture(scope="module")
def golden():
    with np.load(require_shared("fixtures", "realism", "realism.npz"), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def test_official_parity(golden):
    ref, ev = golden["ref_features"], golden["eval_features"]
    clamped = realism.fit_manifold(ref, k=3, clamp_to_percentile=50)
    free = realism.fit_manifold(ref, k=3, clamp_to_percentile=None)
    np.testing.assert_allclose(clamped.radii_N, golden["radii"], rtol=1e-6)
    np.testing.assert_array_equal(clamped.radii_N == 0, golden["radii"] == 0)
    np.testing.assert_allclose(free.radii_N, golden["radii_noclamp"], rtol=1e-6)
    np.testing.assert_allclose(clamped.threshold, golden["clamp_threshold"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(realism.pairwise_sqdist(ev, ref)), golden["sqdist_eval_ref"], rtol=1e-5)

    scores = realism.realism_scores(ref, ev)  # the MAGEC defaults: k = 3, pruned at the 50th percentile
    np.testing.assert_allclose(scores.realism, golden["realism"], rtol=1e-5)
    np.testing.assert_allclose(scores.realism, golden["realism_f64"], rtol=1e-5)
    np.testing.assert_array_equal(scores.in_manifold, golden["in_manifold"])
    np.testing.assert_array_equal(scores.nearest_index, golden["nearest_index"])

    unclamped = realism.evaluate(free, ev)
    np.testing.assert_allclose(unclamped.realism, golden["realism_noclamp"], rtol=2e-5)
    np.testing.assert_allclose(unclamped.realism, golden["realism_noclamp_f64"], rtol=2e-5)
    np.testing.assert_array_equal(unclamped.in_manifold, golden["in_manifold_noclamp"])

    precision, recall = realism.knn_precision_recall(ref, ev, k=3)
    assert np.float32(precision) == golden["precision"] and np.float32(recall) == golden["recall"]

    # Rows made as ref<i> + noise have reference i as their nearest neighbour.
    for row, kind in enumerate(golden["eval_kinds"]):
        if kind.startswith("ref"):
            assert scores.nearest_index[row] == int(kind[3:].split("+")[0]), kind

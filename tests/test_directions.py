"""Editing directions: official files load, boundary fitting recovers a planted direction, GANSpace, edits."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require_shared
from magec_jax.editing import directions as d
from magec_jax.errors import FileFormatError


def test_official_interfacegan_boundaries_load_as_unit_vectors():
    found = d.load_boundary_folder(require_shared("data", "interfacegan", "stylegan2_ffhq_w"))
    assert len(found) == 39 and "Male" in found and "Smiling" in found
    for name, b in found.items():
        assert b.shape == (512,), name
        np.testing.assert_allclose(np.linalg.norm(b), 1.0, rtol=1e-5)


def test_e4e_directions_and_ganspace_files():
    folder = require_shared("data", "editing_directions")
    assert d.load_boundary(folder / "interfacegan_directions" / "age.pt").shape == (512,)
    assert d.load_boundary(folder / "interfacegan_directions" / "pose.pt").shape == (18, 512)
    pca = d.load_ganspace(folder / "ganspace_pca" / "ffhq_pca.pt")
    assert pca.mean.shape == (512,) and pca.components.shape == (80, 512) and pca.std.shape == (80,)
    assert np.all(pca.std > 0) and pca.std[0] > 5 * pca.std[-1]
    np.testing.assert_allclose(np.linalg.norm(pca.components, axis=1), 1.0, rtol=1e-4)


def test_bad_boundary_files_get_one_line(tmp_path):
    (tmp_path / "boundary_X.npy").write_bytes(b"garbage")
    with pytest.raises(FileFormatError, match="boundary_X.npy"):
        d.load_boundary(tmp_path / "boundary_X.npy")
    with pytest.raises(FileFormatError, match="no boundary"):
        d.load_boundary_folder(tmp_path / "empty")


def test_fit_boundary_recovers_a_planted_direction():
    rng = np.random.default_rng(0)
    true = rng.standard_normal(16)
    true /= np.linalg.norm(true)
    w = rng.standard_normal((5000, 16))
    scores = w @ true + 0.05 * rng.standard_normal(5000)
    fit = d.fit_boundary(w, scores, ratio=0.05)
    assert fit.num_train + fit.num_val == 500 and fit.num_val == 150
    assert fit.val_accuracy > 0.97
    np.testing.assert_allclose(np.linalg.norm(fit.normal), 1.0, rtol=1e-5)
    assert float(fit.normal @ true) > 0.95  # oriented towards higher scores


def test_fit_ganspace_finds_the_dominant_axis():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4000, 8)) * np.array([5.0, 2.0, 1, 1, 1, 1, 1, 1]) + 3.0
    pca = d.fit_ganspace(w, num_components=3)
    assert abs(pca.components[0, 0]) > 0.99 and abs(pca.components[1, 1]) > 0.99
    np.testing.assert_allclose(pca.std[:2], [5.0, 2.0], rtol=0.05)
    np.testing.assert_allclose(pca.mean, 3.0, atol=0.2)


def test_edits():
    w = jnp.zeros((2, 4, 3))
    n = jnp.array([1.0, 0.0, 0.0])
    np.testing.assert_allclose(d.interfacegan_edit(w, n, 2.0)[..., 0], 2.0)
    pca = d.GanSpace(mean=np.zeros(3, np.float32), components=np.eye(3, dtype=np.float32), std=np.array([2.0, 1, 1], np.float32))
    out = np.asarray(d.ganspace_edit(w, pca, 0, 1.5, layers=(1, 3)))
    np.testing.assert_allclose(out[:, :, 0], [[0, 3, 3, 0]] * 2)
    np.testing.assert_allclose(d.interpolate(jnp.zeros(3), jnp.ones(3), 0.25), 0.25)

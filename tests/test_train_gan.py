"""StyleGAN2 training: discriminator structure and numerics, the regularisers' gradients, the LFW pipeline and
held-out split, the FD figure, and the tiny config end to end (train, checkpoint, resume, export)."""

from __future__ import annotations

import importlib.util
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magec_jax.models import discriminator as dm
from magec_jax.models.stylegan2 import Generator, StyleGAN2Config, load_generator
from magec_jax.training import data as data_lib
from magec_jax.training import fd as fd_lib
from magec_jax.training import gan
from tests.conftest import REPO, require_shared

LFW = ("data", "lfw", "lfw-deepfunneled.tar")
TINY_D = dm.DiscriminatorConfig(img_resolution=8, channel_base=64, channel_max=8, mbstd_group_size=2)


def _lfw_config(arg: str | None = None):
    spec = importlib.util.spec_from_file_location("lfw_stylegan2_config", REPO / "configs" / "lfw_stylegan2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# ----------------------------------------------------------------------------------------------------------
# Discriminator.


def test_discriminator_names_and_shapes():
    cfg = dm.DiscriminatorConfig(img_resolution=16, channel_base=128, channel_max=16)
    img = jax.ShapeDtypeStruct((8, 16, 16, 3), jnp.float32)
    params = jax.eval_shape(dm.Discriminator(cfg).init, jax.random.key(0), img)["params"]
    shapes = {"/".join(k.key for k in path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    assert shapes == {
        "b16/fromrgb/weight": (1, 1, 3, 8), "b16/fromrgb/bias": (8,),
        "b16/conv0/weight": (3, 3, 8, 8), "b16/conv0/bias": (8,),
        "b16/conv1/weight": (3, 3, 8, 16), "b16/conv1/bias": (16,),
        "b16/skip/weight": (1, 1, 8, 16),
        "b8/conv0/weight": (3, 3, 16, 16), "b8/conv0/bias": (16,),
        "b8/conv1/weight": (3, 3, 16, 16), "b8/conv1/bias": (16,),
        "b8/skip/weight": (1, 1, 16, 16),
        "b4/conv/weight": (3, 3, 17, 16), "b4/conv/bias": (16,),
        "b4/fc/weight": (16 * 16, 16), "b4/fc/bias": (16,),
        "b4/out/weight": (16, 1), "b4/out/bias": (1,),
    }
    logits = jax.eval_shape(dm.Discriminator(cfg).apply, {"params": params}, img)
    assert logits.shape == (8,) and logits.dtype == jnp.float32
    with pytest.raises(ValueError, match="multiple of the group size"):
        jax.eval_shape(dm.Discriminator(cfg).apply, {"params": params}, jax.ShapeDtypeStruct((6, 16, 16, 3), jnp.float32))


@pytest.mark.slow
def test_down_conv_matches_blur_then_strided_reference():
    """conv1's path (FIR pad 2, stride-2 3x3) against a direct numpy evaluation of NVIDIA's conv2d_resample."""
    layer = dm.Conv2dLayer(5, 3, down=2)
    x = np.random.RandomState(0).randn(2, 8, 8, 4).astype(np.float32)
    variables = layer.init(jax.random.key(0), x)
    got = np.asarray(layer.apply(variables, x))
    w = np.asarray(variables["params"]["weight"], np.float64) / np.sqrt(4 * 9)
    f = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    xp = np.pad(x.astype(np.float64), ((0, 0), (2, 2), (2, 2), (0, 0)))
    blurred = np.zeros((2, 9, 9, 4))
    for i in range(9):
        for j in range(9):
            blurred[:, i, j] = np.einsum("bhwc,hw->bc", xp[:, i : i + 4, j : j + 4], f[::-1, ::-1])
    want = np.zeros((2, 4, 4, 5))
    for i in range(4):
        for j in range(4):
            want[:, i, j] = np.einsum("bhwc,hwco->bo", blurred[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3], w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _minibatch_std_numpy(x_nhwc: np.ndarray, group_size: int, num_channels: int) -> np.ndarray:
    """NVIDIA's MinibatchStdLayer.forward, line by line, in NCHW."""
    x = x_nhwc.transpose(0, 3, 1, 2).astype(np.float64)
    n, c, h, w = x.shape
    g = min(group_size, n)
    f = num_channels
    y = x.reshape(g, -1, f, c // f, h, w)
    y = y - y.mean(axis=0)
    y = np.sqrt(np.square(y).mean(axis=0) + 1e-8)
    y = y.mean(axis=(2, 3, 4)).reshape(-1, f, 1, 1)
    y = np.tile(y, (g, 1, h, w))
    return np.concatenate([x, y], axis=1).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("batch,group,channels", [(8, 4, 1), (6, 2, 2), (3, 4, 1)])
def test_minibatch_stddev_matches_numpy_reference(batch, group, channels):
    x = np.random.RandomState(batch).randn(batch, 4, 4, 6).astype(np.float32) * np.arange(1, 7)
    got = dm.minibatch_stddev(jnp.asarray(x), group, channels)
    np.testing.assert_allclose(np.asarray(got), _minibatch_std_numpy(x, group, channels), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Losses.


def _tiny_setup(**kw) -> gan.GANSetup:
    g = StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=8, mapping_layers=1, channel_base=64, channel_max=8)
    return gan.GANSetup(g=g, d=TINY_D, batch_size=4, **kw)


def _jit(fn):
    return jax.jit(fn, compiler_options=gan.FAST_COMPILE_OPTIONS)


@pytest.mark.slow
def test_r1_penalty_matches_finite_differences_and_grad_of_grad():
    setup = _tiny_setup(r1_gamma=3.0)
    d_params = dm.init_discriminator(TINY_D, jax.random.key(0))["params"]
    reals = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    (loss, penalty_B), grads = _jit(lambda p, x: gan.r1_loss(setup, p, x))(d_params, reals)

    # |grad_x sum D|^2 per image by central differences over every input coordinate, in float64 so that the
    # reference is exact to far below float32 rounding.
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), d_params)
        reals64 = jnp.asarray(reals, jnp.float64)
        total = lambda x: jnp.sum(dm.Discriminator(TINY_D, dtype=jnp.float64).apply({"params": params64}, x))
        eye = jnp.eye(reals.size, dtype=jnp.float64).reshape((-1,) + reals.shape)
        eps = 1e-5
        central = jax.jit(lambda e: (jax.vmap(total)(reals64[None] + e) - jax.vmap(total)(reals64[None] - e)) / 2 / eps)
        fd_grad = np.asarray(central(eps * eye))
    assert fd_grad.dtype == np.float64
    fd_penalty_B = np.sum(np.square(fd_grad.reshape(reals.shape)), axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(penalty_B), fd_penalty_B, rtol=2e-4)
    np.testing.assert_allclose(float(loss), np.mean(fd_penalty_B) * 1.5 * 16, rtol=2e-4)

    # The reverse-over-forward parameter gradient equals the gradient of the gradient.
    def naive(p):
        g = jax.grad(lambda x: jnp.sum(dm.Discriminator(TINY_D).apply({"params": p}, x)))(reals)
        return jnp.mean(jnp.sum(jnp.square(g), axis=(1, 2, 3))) * 1.5 * 16

    want = _jit(jax.grad(naive))(d_params)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(b))))
    assert float(loss) > 0 and any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))


@pytest.mark.slow
def test_path_length_gradient_equals_grad_of_grad():
    setup = _tiny_setup(style_mixing_prob=0.5)
    state = gan.init_state(setup, 0, fast_compile=True)
    keys = dict(zip(("z", "z_mix", "mix", "noise", "pl_noise"), jax.random.split(jax.random.key(3), 5), strict=True))
    pl_mean = jnp.float32(0.3)
    (loss, (new_mean, penalty, _)), grads = _jit(lambda p, k: gan.pl_loss(setup, p, state.g_buffers, pl_mean, k))(
        state.g_params, keys
    )

    def naive(p):
        ws = gan.map_latents(setup, p, state.g_buffers, setup.pl_batch_size, keys)[0]
        y = jax.random.normal(keys["pl_noise"], (2, 8, 8, 3)) / 8
        g = jax.grad(lambda w: jnp.sum(gan.synthesize(setup, p, state.g_buffers, w, keys["noise"]) * y))(ws)
        lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(g), axis=2), axis=1))
        mean = pl_mean + (jnp.mean(lengths) - pl_mean) * 0.01
        return jnp.mean(jnp.square(lengths - mean)) * 2.0 * 4

    want_loss, want = _jit(jax.value_and_grad(naive))(state.g_params)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
    np.testing.assert_allclose(float(loss), float(penalty) * 8, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(b))))
    assert float(new_mean) != 0.3


def test_style_mixing_ema_and_lazy_adam_hyperparameters():
    ws = jnp.zeros((3, 6, 2))
    ws2 = jnp.ones((3, 6, 2))
    np.testing.assert_array_equal(gan.mix_styles(ws, ws2, 0.0, jax.random.key(0)), ws)
    cutoffs = set()
    for seed in range(20):
        mixed = np.asarray(gan.mix_styles(ws, ws2, 1.0, jax.random.key(seed)))
        rows = mixed[0, :, 0]
        cutoff = int(np.argmax(rows))
        assert 1 <= cutoff < 6 and np.all(rows[cutoff:] == 1) and np.all(rows[:cutoff] == 0)
        assert np.all(mixed == mixed[:1])  # one cutoff per batch
        cutoffs.add(cutoff)
    assert len(cutoffs) > 1

    setup = _tiny_setup(ema_kimg=10.0, ema_rampup=0.05)
    assert float(gan.ema_beta(setup, jnp.int32(10**6))) == pytest.approx(0.5 ** (4 / 10000), rel=1e-6)
    assert float(gan.ema_beta(setup, jnp.int32(1000))) == pytest.approx(0.5 ** (4 / 50), rel=1e-6)
    assert float(gan.ema_beta(setup, jnp.int32(0))) == 0.0

    # NVIDIA's correction: Adam(lr * mb, betas ** mb) with mb = 16 / 17; one step from zero moments moves
    # each parameter by lr * mb (sign of the gradient).
    opt = gan.lazy_adam(0.0025, (0.0, 0.99), 1e-8, 16)
    params = {"w": jnp.ones(3)}
    updates, _ = opt.update({"w": jnp.asarray([1.0, -2.0, 3.0])}, opt.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -0.0025 * 16 / 17 * np.sign([1.0, -2.0, 3.0]), rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# Data.


@pytest.mark.slow
def test_lfw_tar_pipeline_and_person_split(tmp_path):
    tar = require_shared(*LFW)
    paths = data_lib.list_source(tar)
    assert len(paths) == 12446 and all(re.fullmatch(r"([^/]+)/\1_\d{4}\.jpg", p) for p in paths)
    people = {data_lib.person_of(p) for p in paths}
    assert len(people) == 5366

    train, heldout = data_lib.split_by_person(paths)
    assert len(train) + len(heldout) == len(paths) and len(np.intersect1d(train, heldout)) == 0
    train_people = {data_lib.person_of(paths[i]) for i in train}
    heldout_people = {data_lib.person_of(paths[i]) for i in heldout}
    assert not train_people & heldout_people
    assert sorted(heldout_people) == data_lib.heldout_people(paths)
    assert 0.08 < len(heldout_people) / len(people) < 0.12
    # Deterministic and a property of the name alone: any order or subset gives the same people.
    shuffled = list(np.random.RandomState(0).permutation(paths))
    _, heldout_shuffled = data_lib.split_by_person(shuffled)
    assert {shuffled[i] for i in heldout_shuffled} == {paths[i] for i in heldout}
    assert data_lib.heldout_people(paths[:500]) == [p for p in sorted(heldout_people) if p in {data_lib.person_of(q) for q in paths[:500]}]

    # Portraits: one photo per distinct held-out person, the first of that person, nested across counts.
    sixteen = data_lib.heldout_portraits(shuffled, 16)
    assert len({data_lib.person_of(p) for p in sixteen}) == 16
    assert all(p.endswith("_0001.jpg") and data_lib.person_of(p) in heldout_people for p in sixteen)
    assert set(data_lib.heldout_portraits(paths, 8)) <= set(sixteen)
    with pytest.raises(ValueError, match="held-out people"):
        data_lib.heldout_portraits(paths, len(heldout_people) + 1)

    faces = data_lib.load_faces(tar, 32, crop=128, cache_dir=tmp_path, max_images=24)
    assert faces.images_NxHxWx3.shape == (24, 32, 32, 3) and faces.images_NxHxWx3.dtype == np.uint8
    assert faces.paths == tuple(paths[:24])
    assert faces.images_NxHxWx3.std(axis=0).mean() > 10  # distinct images
    cached = sorted(p.name for p in tmp_path.iterdir())
    assert cached == ["lfw-deepfunneled_r32_c128_n24.json", "lfw-deepfunneled_r32_c128_n24.npy",
                      "lfw-deepfunneled_r32_c128_n24.txt"]
    again = data_lib.load_faces(tar, 32, crop=128, cache_dir=tmp_path, max_images=24)
    np.testing.assert_array_equal(again.images_NxHxWx3, faces.images_NxHxWx3)


def test_batch_indices_walk_seeded_epochs():
    seen = np.concatenate([data_lib.batch_indices(10, 4, step, seed=1) for step in range(5)])
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert not np.array_equal(seen[:10], seen[10:20])
    np.testing.assert_array_equal(data_lib.batch_indices(10, 4, 3, seed=1), seen[12:16])


# ----------------------------------------------------------------------------------------------------------
# FD.


def test_frechet_distance_zero_for_identical_sets_and_exact_for_a_shift():
    feats = np.random.RandomState(0).randn(200, 16) @ np.random.RandomState(1).randn(16, 16)
    stats = fd_lib.feature_stats(feats)
    assert fd_lib.frechet_distance(stats, stats) < 1e-8 * np.trace(stats.sigma_DxD)
    shift = np.linspace(-1, 1, 16)
    assert fd_lib.frechet_distance(stats, fd_lib.feature_stats(feats + shift)) == pytest.approx(shift @ shift, rel=1e-6)
    other = fd_lib.feature_stats(np.random.RandomState(2).randn(200, 16) * 2)
    assert fd_lib.frechet_distance(stats, other) > 1.0


# ----------------------------------------------------------------------------------------------------------
# End to end.


@pytest.mark.slow
def test_tiny_config_trains_checkpoints_resumes_and_exports(tmp_path):
    require_shared(*LFW)
    from magec_jax.train_gan import run

    config = _lfw_config("tiny")
    config.out_dir = str(tmp_path / "run")
    first = run(config)
    assert first["step"] == 4 and first["resumed_from"] is None
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
    assert first["fd"] > first["fd_reference"] > 0
    heldout = (tmp_path / "run" / "heldout_people.txt").read_text().split()
    assert heldout and all(data_lib.is_heldout(p) for p in heldout)
    assert len(list((tmp_path / "run" / "samples").glob("fakes_*_psi0.7.png"))) == 2

    config.total_kimg = 0.032
    second = run(config)
    assert second["resumed_from"] == 4 and second["step"] == 8
    log = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if e["kind"] == "train"] == [2, 4, 6, 8]
    assert [e["kind"] for e in log].count("fd_reference") == 1

    g_cfg, variables = load_generator(second["generator"])
    assert g_cfg.img_resolution == 16 and g_cfg.w_dim == 32
    images = Generator(g_cfg).apply(variables, jnp.zeros((2, g_cfg.z_dim)))
    assert images.shape == (2, 16, 16, 3) and bool(jnp.all(jnp.isfinite(images)))

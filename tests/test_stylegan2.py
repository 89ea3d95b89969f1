"""StyleGAN2 ops and generator: ops against naive NumPy references, and the generator's shapes, options and
transform-friendliness on tiny random configs (no fixtures needed; fixture parity is in test_ports_stylegan2)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magec_jax import ops
from magec_jax.models.stylegan2 import (
    Generator,
    StyleGAN2Config,
    config_from_dict,
    init_generator,
    load_generator,
    noise_shapes,
    truncate,
)
from magec_jax.weights import Converted, save_converted

TINY = StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=8, channel_base=64, channel_max=16, mapping_layers=2)


def _randomised(cfg: StyleGAN2Config, seed: int = 0) -> dict:
    """Random variables whose biases and noise strengths are non-zero (NVIDIA initialises them to 0)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: x + jnp.asarray(0.2 * rng.standard_normal(x.shape), jnp.float32),
        init_generator(cfg, jax.random.key(seed)),
    )


def _jit(G: Generator, method: str, **static):
    """``jit((variables, *arrays, **arrays) -> G.apply(..., method=method, **static))``; eager apply is slow."""
    return jax.jit(lambda v, *args, **kw: G.apply(v, *args, method=method, **static, **kw))


# ---------------------------------------------------------------------------------------------- ops
def _naive_upfirdn2d(x, taps, up, down, pad, gain):
    """Zero insertion, padding (negative crops), 2-D *convolution* with outer(taps)/sum**2*gain, striding."""
    f = np.outer(taps, taps) / np.sum(taps) ** 2 * gain
    b, h, w, c = x.shape
    u = np.zeros((b, h * up, w * up, c))
    u[:, ::up, ::up] = x
    (y0, y1), (x0, x1) = pad
    u = np.pad(u, ((0, 0), (max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0)), (0, 0)))
    u = u[:, max(-y0, 0) : u.shape[1] - max(-y1, 0), max(-x0, 0) : u.shape[2] - max(-x1, 0)]
    k = f.shape[0]
    out = np.zeros((b, u.shape[1] - k + 1, u.shape[2] - k + 1, c))
    ff = f[::-1, ::-1]
    for i in range(k):
        for j in range(k):
            out += ff[i, j] * u[:, i : i + out.shape[1], j : j + out.shape[2]]
    return out[:, ::down, ::down]


@pytest.mark.parametrize(
    "taps, up, down, pad, gain",
    [
        ((1, 3, 3, 1), 2, 1, ((2, 1), (2, 1)), 4.0),  # upsample2d
        ((1, 3, 3, 1), 1, 2, ((1, 1), (1, 1)), 1.0),  # downsample2d
        ((1, 2, 4), 1, 1, ((-1, 2), (0, 1)), 1.0),  # asymmetric taps (flip matters) and a crop
        ((1, 3, 3, 1), 2, 2, ((1, 0), (0, 2)), 2.0),
    ],
)
def test_upfirdn2d_matches_naive(taps, up, down, pad, gain):
    x = np.random.default_rng(0).standard_normal((2, 5, 6, 3)).astype(np.float32)
    got = ops.upfirdn2d(jnp.asarray(x), taps, up=up, down=down, padding=pad, gain=gain)
    np.testing.assert_allclose(got, _naive_upfirdn2d(x, taps, up, down, pad, gain), atol=1e-5)
    if (up, down, pad) == (2, 1, ((2, 1), (2, 1))):
        np.testing.assert_allclose(ops.upsample2d(jnp.asarray(x)), got, atol=1e-6)


@pytest.mark.parametrize(
    "k, padding",
    [(1, 0), (1, ((0, -1), (-1, 0))), (1, ((0, 1), (0, 1))), (2, 0), (2, ((0, -1), (0, 0))), (3, 0), (3, 1),
     (2, ((1, 1), (0, 1)))],
)
def test_frozen_conv2d_forms_match_the_plain_convolution(k, padding):
    # frozen_conv2d computes unpadded convolutions in other forms (a matrix product for 1x1, padded by one and
    # cropped otherwise), with a precomputed input-gradient kernel: the same values and input gradient as conv2d.
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((2, 9, 8, 5)).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((k, k, 5, 4)).astype(np.float32))
    frozen = ops.freeze_conv(w)

    def plain(x):
        return ops.conv2d(x, w, padding=padding)

    def fast(x):
        return ops.frozen_conv2d(x, *frozen.kernels, *frozen.kernels_t, padding)

    want = plain(x)
    got = fast(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    cot = jnp.asarray(rng.standard_normal(want.shape).astype(np.float32))
    grad_want = jax.grad(lambda x: jnp.vdot(plain(x), cot))(x)
    grad_got = jax.grad(lambda x: jnp.vdot(fast(x), cot))(x)
    np.testing.assert_allclose(grad_got, grad_want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k, groups", [(3, 1), (3, 2), (4, 1), (1, 1)])
def test_conv_transpose2d_matches_scatter_add(k, groups):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    w = rng.standard_normal((k, k, 6 // groups, 4)).astype(np.float32)
    b, h, wd, _ = x.shape
    ref = np.zeros((b, 2 * (h - 1) + k, 2 * (wd - 1) + k, 4))
    og = 4 // groups
    for g in range(groups):  # PyTorch semantics: y[2i+ky, 2j+kx] += x[i, j] @ w[ky, kx], unflipped
        xg = x[..., g * (6 // groups) : (g + 1) * (6 // groups)]
        for ky in range(k):
            for kx in range(k):
                ref[:, ky : ky + 2 * h : 2, kx : kx + 2 * wd : 2, g * og : (g + 1) * og] += (
                    xg @ w[ky, kx][:, g * og : (g + 1) * og]
                )
    got = ops.conv_transpose2d(jnp.asarray(x), jnp.asarray(w), feature_group_count=groups)
    np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("up, demodulate", [(1, True), (2, True), (1, False)])
def test_modulated_conv_fused_and_not_match_naive(up, demodulate):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 5, 4)).astype(np.float32)
    w = rng.standard_normal((3, 3, 4, 6)).astype(np.float32)
    s = (1 + 0.3 * rng.standard_normal((3, 4))).astype(np.float32)
    outs = []
    for n in range(3):  # per-sample kernel, then a plain conv
        wn = w * s[n][None, None, :, None]
        if demodulate:
            wn = wn / np.sqrt((wn**2).sum(axis=(0, 1, 2)) + 1e-8)
        xn = jnp.asarray(x[n : n + 1])
        if up == 1:
            outs.append(ops.conv2d(xn, jnp.asarray(wn), padding=1))
        else:
            outs.append(ops.upfirdn2d(ops.conv_transpose2d(xn, jnp.asarray(wn)), padding=1, gain=4.0))
    ref = np.concatenate(outs)
    for fused in (True, False):
        got = ops.modulated_conv2d(
            jnp.asarray(x), jnp.asarray(w), jnp.asarray(s), demodulate=demodulate, up=up, fused=fused
        )
        assert got.shape == (3, 5 * up, 5 * up, 6)
        np.testing.assert_allclose(got, ref, atol=2e-5)


# The generator family's one tolerance for the same arithmetic compiled as another program (another noise mode,
# w against W+, fused modulation, vmapped per image): XLA fuses each program differently, and differently per
# instruction set, so sums are reordered and differ by a few float32 ulps of the image's magnitude (3.5 ulps
# measured on an AVX2 CPU; a wrong computation differs by 1e-3 or more). Bound: 1e-5 of the magnitude, about
# 80 ulps.
REORDER_RTOL = 1e-5


def assert_reordered(got, want):
    """``got`` equals ``want`` up to a reordering of float32 sums (see ``REORDER_RTOL``)."""
    np.testing.assert_allclose(got, want, atol=REORDER_RTOL * float(jnp.abs(jnp.asarray(want)).max()))


def test_bias_act_and_dense():
    x = jnp.asarray([[-2.0, 0.5, 3.0]])
    y = ops.bias_act(x, jnp.asarray([1.0, 0.0, 0.0]), act="lrelu", clamp=2.0)
    np.testing.assert_allclose(y, [[-0.2 * np.sqrt(2), 0.5 * np.sqrt(2), 2.0]], rtol=1e-6)
    w = jnp.full((3, 2), 10.0)
    np.testing.assert_allclose(
        ops.dense(x, w, jnp.ones(2), lr_multiplier=0.1), [[1.5 / np.sqrt(3) + 0.1] * 2], rtol=1e-6
    )


# ---------------------------------------------------------------------------------------------- generator
@pytest.mark.parametrize(
    "cfg",
    [
        StyleGAN2Config(z_dim=4, w_dim=4, img_resolution=4, channel_base=64, channel_max=16, mapping_layers=1),
        StyleGAN2Config(z_dim=6, w_dim=5, img_resolution=8, channel_base=40, channel_max=12, layer_features=7),
        # 4:24 8:12 16:6 32:3 64:1 channels, grey output, a 1-layer mapping
        StyleGAN2Config(
            z_dim=5,
            w_dim=7,
            img_resolution=64,
            img_channels=1,
            channel_base=96,
            channel_max=24,
            mapping_layers=1,
            conv_clamp=0.5,
        ),
    ],
    ids=["res4", "res8-odd", "res64-odd-grey-clamp"],
)
@pytest.mark.slow
def test_shapes_on_tiny_configs(cfg):
    variables = _randomised(cfg)
    G = Generator(cfg)
    z = jax.random.normal(jax.random.key(3), (2, cfg.z_dim))
    ws = _jit(G, "mapping")(variables, z)
    assert ws.shape == (2, cfg.num_ws, cfg.w_dim) == (2, 2 * int(np.log2(cfg.img_resolution)) - 2, cfg.w_dim)
    img, inter = _jit(G, "synthesis", return_intermediates=True)(variables, ws)
    res = cfg.img_resolution
    assert img.shape == (2, res, res, cfg.img_channels) and img.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(img)))
    np.testing.assert_array_equal(inter[f"b{res}/img"], img)
    for r in cfg.block_resolutions:
        assert inter[f"b{r}/x"].shape == (2, r, r, cfg.channels(r))
        if cfg.conv_clamp is not None:
            assert float(jnp.abs(inter[f"b{r}/x"]).max()) <= cfg.conv_clamp
    buffers = variables["buffers"]["synthesis"]
    for name, shape in noise_shapes(cfg):
        block, conv = name.split("/")
        assert buffers[block][conv]["noise_const"].shape == shape
    assert len(noise_shapes(cfg)) == cfg.num_ws - 1


@pytest.mark.slow
def test_w_is_broadcast_to_every_layer():
    variables, G = _randomised(TINY), Generator(TINY)
    w = jax.random.normal(jax.random.key(4), (2, TINY.w_dim))
    wplus = jnp.broadcast_to(w[:, None], (2, TINY.num_ws, TINY.w_dim))
    synth = _jit(G, "synthesis")
    assert_reordered(synth(variables, w), synth(variables, wplus))
    z = jax.random.normal(jax.random.key(5), (2, TINY.z_dim))
    from_z = G.apply(variables, z, method="mapping")
    assert_reordered(_jit(G, "__call__")(variables, z), synth(variables, from_z))
    with pytest.raises(ValueError, match=r"ws must be \[B, 8\] or \[B, 4, 8\]"):
        G.apply(variables, wplus[:, :3], method="synthesis")


def test_truncation_psi_and_cutoff():
    variables, G = _randomised(TINY), Generator(TINY)
    z = jax.random.normal(jax.random.key(5), (3, TINY.z_dim))
    w_avg = variables["buffers"]["mapping"]["w_avg"]
    ws = _jit(G, "mapping")(variables, z)
    ws0 = _jit(G, "mapping", truncation_psi=0.0)(variables, z)
    np.testing.assert_allclose(ws0, jnp.broadcast_to(w_avg, ws.shape), atol=1e-6)
    ws_cut = _jit(G, "mapping", truncation_psi=0.5, truncation_cutoff=2)(variables, z)
    np.testing.assert_allclose(ws_cut[:, :2], 0.5 * (ws[:, :2] + w_avg[None, None]), atol=1e-6)
    np.testing.assert_array_equal(ws_cut[:, 2:], ws[:, 2:])
    np.testing.assert_allclose(truncate(ws, w_avg, 0.5, cutoff=2), ws_cut, atol=1e-6)


def test_class_conditioning():
    cfg = dataclasses.replace(TINY, c_dim=3)
    variables, G = _randomised(cfg), Generator(cfg)
    assert variables["params"]["mapping"]["embed"]["weight"].shape == (3, cfg.w_dim)
    z = jnp.broadcast_to(jax.random.normal(jax.random.key(6), (1, cfg.z_dim)), (3, cfg.z_dim))
    ws = _jit(G, "mapping")(variables, z, jnp.eye(3))
    assert float(jnp.abs(ws[0] - ws[1]).min()) > 0 and float(jnp.abs(ws[1] - ws[2]).max()) > 1e-3
    with pytest.raises(ValueError, match="class-conditional"):
        G.apply(variables, z, method="mapping")


@pytest.mark.slow
def test_noise_modes_and_explicit_noise():
    variables, G = _randomised(TINY), Generator(TINY)
    ws = _jit(G, "mapping")(variables, jax.random.normal(jax.random.key(7), (2, TINY.z_dim)))
    modes = {mode: _jit(G, "synthesis", noise_mode=mode) for mode in ("const", "none", "random")}

    def synth(noise_mode="const", **kw):
        return modes[noise_mode](variables, ws, **kw)

    const, none = synth(noise_mode="const"), synth(noise_mode="none")
    assert float(jnp.abs(const - none).max()) > 1e-3
    buffers = variables["buffers"]["synthesis"]
    as_buffers = [buffers[n.split("/")[0]][n.split("/")[1]]["noise_const"] for n, _ in noise_shapes(TINY)]
    assert_reordered(synth(noise=as_buffers, noise_mode="none"), const)  # [H, W] maps
    per_sample = [jnp.stack([m, jnp.zeros_like(m)]) for m in as_buffers]  # [B, H, W] maps
    mixed = synth(noise=per_sample)
    assert_reordered(mixed[0], const[0])
    assert_reordered(mixed[1], none[1])
    partial = [None] * len(as_buffers)
    partial[0] = jnp.zeros((4, 4))  # one explicit map; the others follow noise_mode
    assert float(jnp.abs(synth(noise=partial) - const).max()) > 0
    r1, r1b, r2 = (synth(noise_mode="random", key=jax.random.key(k)) for k in (1, 1, 2))
    np.testing.assert_array_equal(r1, r1b)
    assert float(jnp.abs(r1 - r2).max()) > 1e-3 and float(jnp.abs(r1 - const).max()) > 1e-3
    with pytest.raises(ValueError, match="needs a key"):
        synth(noise_mode="random")
    with pytest.raises(ValueError, match="noise must list 3 maps"):
        synth(noise=per_sample[:2])


@pytest.mark.slow
def test_fused_equals_nonfused_and_bf16_is_close():
    cfg = TINY
    variables = _randomised(cfg)
    ws = jax.random.normal(jax.random.key(8), (2, cfg.num_ws, cfg.w_dim))
    ref = _jit(Generator(cfg), "synthesis")(variables, ws)
    fused = _jit(Generator(cfg, fused_modconv=True), "synthesis")(variables, ws)
    assert_reordered(fused, ref)
    bf16 = _jit(Generator(cfg, dtype=jnp.bfloat16), "synthesis")(variables, ws)
    assert bf16.dtype == jnp.float32
    rel_rms = float(jnp.sqrt(jnp.mean((bf16 - ref) ** 2) / jnp.mean(ref**2)))
    assert 1e-4 < rel_rms < 0.05, rel_rms  # bf16 really ran (not float32), and stays close


@pytest.mark.slow
def test_vmap_jit_and_grad_wrt_wplus():
    cfg = TINY
    variables, G = _randomised(cfg), Generator(cfg)
    wplus = jax.random.normal(jax.random.key(9), (3, cfg.num_ws, cfg.w_dim))

    def one_image(v, w_LxD):  # what the inversion engine does: per-image function, vmapped
        return G.apply(v, w_LxD[None], method="synthesis")[0]

    batched = _jit(G, "synthesis")(variables, wplus)
    per_image = jax.jit(jax.vmap(one_image, in_axes=(None, 0)))
    assert_reordered(per_image(variables, wplus), batched)
    grad_fn = jax.jit(jax.vmap(jax.grad(lambda v, w: jnp.sum(one_image(v, w) ** 2), argnums=1), in_axes=(None, 0)))
    grads = grad_fn(variables, wplus)
    assert grads.shape == wplus.shape and bool(jnp.all(jnp.isfinite(grads)))
    assert bool(jnp.all(jnp.abs(grads).sum(axis=-1) > 0)), "every W+ row must reach the image"
    other = _randomised(cfg, seed=5)  # new weights, same shapes: no recompilation
    grad_fn(other, wplus)
    assert grad_fn._cache_size() == 1
    # finite-difference check of one directional derivative (a batch of 3 reuses the compiled forward)
    d = jax.random.normal(jax.random.key(10), wplus.shape[1:])
    eps = 1e-2
    plus, minus, _ = per_image(variables, jnp.stack([wplus[0] + eps * d, wplus[0] - eps * d, wplus[0]]))
    sq = lambda img: np.sum(np.asarray(img, np.float64) ** 2)
    fd = (sq(plus) - sq(minus)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.sum(grads[0] * d)), fd, rtol=2e-2)


def test_init_generator_follows_the_modules_initialisers():
    cfg = StyleGAN2Config(z_dim=4, w_dim=4, img_resolution=4, channel_base=32, channel_max=8, mapping_layers=2)
    native = jax.jit(lambda k: Generator(cfg).init({"params": k}, jnp.zeros((1, 4))))(jax.random.key(0))
    fast = init_generator(cfg, jax.random.key(0))
    flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}
    native, fast = flat(native), flat(fast)
    assert native.keys() == fast.keys()
    for name, x in native.items():
        y = fast[name]
        assert x.shape == y.shape, name
        if np.all(x == x.flat[0]):  # a constant initialiser: equal values
            np.testing.assert_array_equal(y, x, err_msg=name)
        else:  # a random one: same scale (N(0, 1), or N(0, 1) / lr_multiplier in the mapping)
            ratio = np.abs(y).mean() / np.abs(x).mean()
            assert 0.5 < ratio < 2.0 and not np.allclose(y, y.flat[0]), (name, ratio)


def test_config_round_trip_and_validation(tmp_path):
    cfg = dataclasses.replace(TINY, conv_clamp=256.0, c_dim=2, layer_features=8)
    assert cfg.layer_features is None  # equal to w_dim: stored in canonical form
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown StyleGAN2 config keys"):
        config_from_dict({**cfg.to_dict(), "fmap_base": 1})
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Config(img_resolution=48)
    with pytest.raises(ValueError, match="not implemented"):
        StyleGAN2Config(architecture="resnet")
    variables = jax.tree.map(np.asarray, _randomised(cfg))
    save_converted(tmp_path / "g", Converted(kind="stylegan2", config=cfg.to_dict(), variables=variables))
    cfg2, loaded = load_generator(tmp_path / "g")
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)

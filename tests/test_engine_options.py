"""The engine's compute options (modulation, precision, loop, donation, remat) on a tiny real generator with the
real LPIPS-VGG16 architecture (random weights): each gives the default's latents within its precision's
tolerance, and each really changes how the step runs (donated buffers, one scan per chunk, checkpointed
layers, bfloat16 kernels). Also the frozen generator kernels the engine renders with, and the options' parsing.

Tolerances: float32 alternatives (fused modulation, scan, no donation, remat, TF32, which XLA:CPU computes in
float32) reorder float32 roundings only. Their gradients then differ by a few float32 ulps (relative ~1e-6);
Adam's update is lr * m / sqrt(v), invariant to the gradient's scale, so each of the 8 steps moves a latent
coordinate by at most lr = 0.05 times that relative difference: 8 * 0.05 * 1e-6 = 4e-7 (measured 4.3e-7 or
below on AVX-512 and AVX2 CPUs), bounded here at 5e-6 for a tenfold margin.

bf16 is not compared at the end of an optimisation, which amplifies rounding differences chaotically and so
differs from CPU to CPU. What bfloat16 guarantees is checked instead, at fixed latents: every bf16 operation
rounds its operands to 8 significant bits (unit roundoff u = 2^-8); N such roundings on the way from the latent
to the loss (or to its gradient) add independent relative errors of at most u each, so the result stays within
3 sqrt(N) u (three standard deviations of that random walk) of float32. N is counted in the compiled program
itself, which also proves that bf16 ran. The long run must then reach a loss comparable to float32's.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magec_jax.bundle import stylegan2_networks
from magec_jax.configdicts import from_configdict
from magec_jax.errors import ConfigError, MagecError
from magec_jax.inversion import protocols
from magec_jax.inversion.engine import Engine
from magec_jax.inversion.job import JobConfig
from magec_jax.inversion.settings import AUTO, ComputeOptions, InversionSettings, NetworkCompute, Phase
from magec_jax.models import stylegan2
from magec_jax.models.interfaces import Descriptor, IdentityEmbedder
from magec_jax.models.linknet import LinkNet, LinkNetConfig
from magec_jax.models.lpips import LPIPS

CFG = stylegan2.StyleGAN2Config(
    z_dim=8, w_dim=8, img_resolution=16, channel_base=128, channel_max=16, mapping_layers=2
)
K = 3
FLOAT32_ATOL = 5e-6
SETTINGS = InversionSettings(
    phases=(Phase(4, mse=1e-3, lpips=0.5, id=0.1, magec=0.1), Phase(4, mse=0.5, lpips=0.5, id=0.1, magec=0.1)),
    lr=0.05,
    lr_decay_every=4,
    chunk_steps=3,  # 3 + 3 + 2: the scan loop runs a shorter last chunk
    compute=ComputeOptions(modulation="non_fused", precision="float32", loop="dispatch", donate="on", remat="off"),
)


def _pooled(images_BxHxWxC):
    b, h, w, c = images_BxHxWxC.shape
    return images_BxHxWxC.reshape(b, 4, h // 4, 4, w // 4, c).mean((2, 4)).reshape(b, -1)


def _embed(variables, images):
    e = _pooled(images) @ variables["w"]
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True)


def _describe(variables, images):
    return _pooled(images) @ variables["w"]


@pytest.fixture(scope="module")
def networks():
    keys = jax.random.split(jax.random.key(0), 6)
    generator = stylegan2.init_generator(CFG, keys[0])
    generator = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(keys[1], x.shape), generator)  # non-zero biases
    image = jnp.zeros((1, 16, 16, 3))
    lpips = LPIPS().init(keys[4], image, image)
    # LPIPS's heads are non-negative (a distance); random ones would make the loss unbounded below.
    lpips = {"params": {k: jax.tree.map(jnp.abs, v) if k.startswith("lin") else v for k, v in lpips["params"].items()}}
    directions = jax.random.normal(keys[3], (K, CFG.w_dim))
    return stylegan2_networks(
        CFG,
        generator,
        w_avg=0.1 * jax.random.normal(keys[2], (CFG.w_dim,)),
        lpips_variables=lpips,
        identity=IdentityEmbedder("tiny", _embed, {"w": jax.random.normal(keys[5], (48, 16))}),
        descriptor=Descriptor("tiny", ("a", "b", "c"), "bce", _describe, {"w": jax.random.normal(keys[1], (48, K))}),
        linknet=LinkNet(LinkNetConfig(CFG.num_ws, CFG.w_dim, K)).init(keys[2], jnp.zeros((CFG.num_ws, CFG.w_dim))),
        directions=directions / jnp.linalg.norm(directions, axis=-1, keepdims=True),
    )


@pytest.fixture(scope="module")
def targets():
    return np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def run(networks, targets):
    """``run(**options)``: the engine for the default options changed by ``options`` and its inversion of the
    targets, each computed once per module."""
    done = {}

    def invert(**options):
        key = tuple(sorted(options.items()))
        if key not in done:
            settings = dataclasses.replace(SETTINGS, compute=dataclasses.replace(SETTINGS.compute, **options))
            engine = Engine(networks, settings)
            done[key] = engine, engine.invert(targets)
        return done[key]

    return invert


@pytest.mark.parametrize(
    "options", [dict(modulation="fused"), dict(loop="scan"), dict(donate="off"), dict(remat="on"), dict(precision="tf32")]
)
@pytest.mark.slow
def test_float32_options_give_the_default_latents(networks, run, options):
    _, reference = run()
    engine, out = run(**options)
    assert engine.compute == dataclasses.replace(SETTINGS.compute, **options)
    moved = np.abs(np.asarray(reference["ws"]) - np.asarray(networks.w_avg)).max()
    assert moved > 0.1  # the optimisation really moved the latents
    np.testing.assert_allclose(np.asarray(out["ws"]), np.asarray(reference["ws"]), atol=FLOAT32_ATOL)
    np.testing.assert_allclose(np.asarray(out["terms"]), np.asarray(reference["terms"]), rtol=1e-4, atol=1e-6)


def _bf16_ops(lowered_text: str) -> tuple[int, int, int]:
    """(convolutions, of which bfloat16, bfloat16 matrix products) in a lowered program."""
    lines = lowered_text.splitlines()
    convs = [line for line in lines if "stablehlo.convolution" in line]
    dots = [line for line in lines if "stablehlo.dot_general" in line]
    return len(convs), sum("bf16" in line for line in convs), sum("bf16" in line for line in dots)


@pytest.mark.slow
def test_bf16_stays_within_bfloat16_precision_of_float32(networks, run, targets):
    _, reference = run()
    engine32, _ = run()
    engine, out = run(precision="bf16")
    assert engine.nets.compute.dtype == "bfloat16"
    frozen = engine.nets.generator[stylegan2.FROZEN]["synthesis"]["b8"]["conv1"]["conv"]
    assert frozen.kernels[0].dtype == jnp.bfloat16
    weights = jnp.asarray([dict(SETTINGS.phases[-1].weights).get(name, 0.0) for name in engine.term_names])

    def gradient_fn(eng):
        def loss(lat):
            terms = eng.evaluate(lat, targets)["terms"]
            return jnp.sum(terms @ weights), terms

        return jax.value_and_grad(loss, has_aux=True)

    # At the float32 run's end-points, where the bf16 run should land too.
    latents = np.asarray(reference["ws"])
    fn32, fn16 = jax.jit(gradient_fn(engine32)), jax.jit(gradient_fn(engine))
    (_, terms32), grad32 = fn32(latents)
    (_, terms16), grad16 = fn16(latents)
    n_convs32, _, n_bf16_32 = _bf16_ops(fn32.lower(latents).as_text())
    n_convs, n_bf16_convs, n_bf16_dots = _bf16_ops(fn16.lower(latents).as_text())
    assert n_bf16_32 == 0 and n_convs == n_convs32
    # bf16 really runs: the generator's and LPIPS's convolutions (not the mapping or the stand-in networks).
    assert n_bf16_convs >= 0.8 * n_convs, (n_bf16_convs, n_convs)
    bound = 3 * np.sqrt(n_bf16_convs + n_bf16_dots) * 2.0**-8  # 0.1 here; measured 0.005 (terms), 0.028 (gradient)
    np.testing.assert_array_less(np.abs(terms16 - terms32), bound * np.abs(terms32) + 1e-6)
    grad_error = np.linalg.norm(grad16 - grad32, axis=(1, 2)) / np.linalg.norm(grad32, axis=(1, 2))
    assert np.all(grad_error < bound), (grad_error, bound)

    # The whole bf16 run is no copy of the float32 one, yet gets as far down: its final loss is within the
    # same relative bound of float32's, measured on the float32 run's descent from w_avg.
    start = np.broadcast_to(np.asarray(networks.w_avg), latents.shape)
    initial = engine32.evaluate(start, targets)["terms"]
    first, last32, last16 = (np.asarray(t) @ np.asarray(weights) for t in (initial, reference["terms"], out["terms"]))
    assert np.all(np.linalg.norm(np.asarray(out["ws"]) - latents, axis=(1, 2)) > 0)
    assert np.all(last32 < first)
    np.testing.assert_array_less(last16 - last32, bound * (first - last32))


@pytest.mark.slow
def test_scan_runs_one_call_per_chunk(run):
    engine, _ = run(loop="scan")
    variants = engine.compiled_variants()
    assert variants["scan_chunk"] == 2  # chunks of 3 and the last of 2
    assert variants["step"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("donate", ["on", "off"])
def test_donation_reuses_the_state_buffers(targets, run, donate):
    engine, _ = run() if donate == "on" else run(donate="off")
    prepared = engine.prepare(jnp.asarray(targets))
    state = engine.init(2)
    before = state.latent.unsafe_buffer_pointer()
    after = engine.step(state, prepared, 0).latent.unsafe_buffer_pointer()
    assert state.latent.is_deleted() == (donate == "on")
    assert (after == before) == (donate == "on")  # donated: the new latent is written into the old one's memory


def test_remat_checkpoints_every_synthesis_layer(networks):
    ws = jnp.zeros((1, CFG.num_ws, CFG.w_dim))
    layers = 3 * len(CFG.block_resolutions) - 1  # conv0 (but at 4x4), conv1, torgb per block

    def checkpoints(remat):
        synthesize = stylegan2.synthesize_fn(CFG, remat=remat)
        jaxpr = jax.make_jaxpr(lambda w: synthesize(networks.generator, w, None))(ws)
        return sum(eqn.primitive.name in ("checkpoint", "remat2") for eqn in jaxpr.jaxpr.eqns)  # jax.checkpoint

    assert (checkpoints(False), checkpoints(True)) == (0, layers)


@pytest.mark.slow
def test_frozen_kernels_give_the_plain_images_and_gradients():
    variables = stylegan2.init_generator(CFG, jax.random.key(3))
    variables = jax.tree.map(lambda x: x + 0.05, variables)
    ws = jax.random.normal(jax.random.key(4), (2, CFG.num_ws, CFG.w_dim))
    synthesize = stylegan2.synthesize_fn(CFG)

    def value_and_grad(v):
        return jax.jit(jax.value_and_grad(lambda w: jnp.sum(jnp.sin(synthesize(v, w, None)))))(ws)

    with jax.default_matmul_precision("highest"):
        (value, grad), (frozen_value, frozen_grad) = value_and_grad(variables), value_and_grad(
            stylegan2.freeze_synthesis(CFG, variables)
        )
    np.testing.assert_allclose(frozen_value, value, rtol=1e-5)
    np.testing.assert_allclose(frozen_grad, grad, rtol=1e-5, atol=1e-5 * float(jnp.abs(grad).max()))


def test_auto_resolves_per_platform_and_bad_values_are_refused():
    for platform, choices in AUTO.items():
        resolved = ComputeOptions().resolved(platform)
        assert resolved == choices and "auto" not in dataclasses.asdict(resolved).values()
    assert ComputeOptions(loop="scan").resolved("cpu").loop == "scan"  # an explicit choice wins
    assert ComputeOptions(precision="bf16", modulation="fused", remat="on").resolved("cpu").networks == (
        NetworkCompute(fused_modulation=True, dtype="bfloat16", remat=True)
    )
    with pytest.raises(ConfigError, match="compute.precision must be one of"):
        ComputeOptions(precision="fp8")
    with pytest.raises(ConfigError, match="no automatic choices"):
        ComputeOptions().resolved("abacus")


def test_job_config_reads_the_compute_block():
    config = protocols.job_config("magec")
    assert from_configdict(JobConfig, config).settings.compute == ComputeOptions()
    config.inversion.compute.loop = "scan"
    config.inversion.compute.precision = "bf16"
    assert from_configdict(JobConfig, config).settings.compute == ComputeOptions(loop="scan", precision="bf16")
    config.inversion.compute.remat = "sometimes"
    with pytest.raises(ConfigError, match="compute.remat"):
        from_configdict(JobConfig, config)


def test_networks_without_variants_refuse_other_compute(networks):
    fixed = dataclasses.replace(networks, compute_variant=None)
    assert fixed.for_compute(NetworkCompute()) is fixed
    with pytest.raises(MagecError, match="cannot run with"):
        fixed.for_compute(NetworkCompute(remat=True))

"""Mechanics of the inversion engine on stand-in networks: loss goes down, batch invariance, failure
isolation, no recompiles, the noise stage, and sharding over 8 simulated devices."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import engine_standins as standins
from magec_jax.errors import ConfigError
from magec_jax.inversion.engine import Engine, InversionSettings, NoisePhase, Phase
from magec_jax.inversion.settings import ComputeOptions
from magec_jax.inversion.terms import BUILTIN_TERMS

SETTINGS = InversionSettings(
    phases=(Phase(6, mse=1e-3, lpips=0.5, id=3e-4, magec=3e-4), Phase(6, mse=0.5, lpips=0.5, id=3e-4, magec=3e-4)),
    lr=0.05,
    lr_decay_every=4,
    chunk_steps=5,
)


def _invert(images, settings=SETTINGS):
    return Engine(standins.networks(), settings).invert(images)


@pytest.mark.slow
def test_loss_decreases_and_outputs_have_the_documented_shapes():
    images = standins.targets(2)
    long = InversionSettings(phases=(Phase(60, mse=1.0, lpips=0.5, id=0.01, magec=0.01),), lr=0.05, chunk_steps=20)
    engine = Engine(standins.networks(), long)
    seen = []
    out = engine.invert(images, on_chunk=lambda done, total, st: seen.append((done, np.asarray(st.losses[:, 0]))))
    assert [d for d, _ in seen] == [20, 40, 60]
    assert np.all(seen[-1][1] < 0.5 * seen[0][1])
    assert out["ws"].shape == (2, standins.NUM_WS, standins.W_DIM)
    assert out["images"].shape == images.shape
    assert out["terms"].shape == (2, 4)
    assert not np.any(np.asarray(out["failed"]))
    # Each chunk shape compiles once, whatever the phase.
    assert engine.compiled_variants()["step"] == 1


@pytest.mark.parametrize("loop", ["dispatch", "scan"])
def test_phase_weights_switch_without_recompiling(loop):
    """Two phases with different weights (mse 1e-3, then 0.5) inverted in one run: the step compiles once for
    the batch shape, across the phase switch. Dispatch runs every step, so the switch at step 6 is a call of
    the same compiled step; the scan runs two chunks of 6 steps, one per phase."""
    assert SETTINGS.weighted_terms == ("id", "lpips", "magec", "mse")
    table = SETTINGS.weight_table(BUILTIN_TERMS[:4])  # the paper's four terms
    assert BUILTIN_TERMS[:4] == ("mse", "lpips", "id", "magec") and table.shape == (12, 4)
    np.testing.assert_allclose(table[5], [1e-3, 0.5, 3e-4, 3e-4])
    np.testing.assert_allclose(table[6], [0.5, 0.5, 3e-4, 3e-4])
    settings = dataclasses.replace(SETTINGS, chunk_steps=6, compute=ComputeOptions(loop=loop))
    engine = Engine(standins.networks(), settings)
    seen = []
    out = engine.invert(standins.targets(2), on_chunk=lambda done, total, st: seen.append(done))
    assert seen == [6, 12]  # both phases ran
    assert not np.any(np.asarray(out["failed"]))
    # The weights really switched: the run differs from one that keeps the first phase's weights throughout.
    first_only = dataclasses.replace(settings, phases=(dataclasses.replace(SETTINGS.phases[0], steps=12),))
    same_phase = Engine(standins.networks(), first_only).invert(standins.targets(2))
    assert np.abs(np.asarray(out["ws"]) - np.asarray(same_phase["ws"])).max() > 1e-4
    variants = engine.compiled_variants()
    assert variants["scan_chunk" if loop == "scan" else "step"] == 1, variants
    assert variants["step" if loop == "scan" else "scan_chunk"] == 0, variants


def test_step_level_api_is_the_inversion():
    """``init``, ``step`` (one step or a scanned vector of steps), ``finish`` and ``compile`` reproduce
    ``invert`` step for step."""
    images = standins.targets(2)
    engine = Engine(standins.networks(), SETTINGS)
    expected = engine.invert(images)
    targets = engine.prepare(images)
    state = engine.init(2)
    for step in range(4):
        state = engine.step(state, targets, step)
    state = engine.step(state, targets, np.arange(4, 9))
    compiled = engine.compile("step", state, targets, 0)
    for step in range(9, SETTINGS.total_steps):
        state = compiled(state, targets, np.int32(step))
    out = engine.finish(state, targets)
    for key in ("ws", "images", "terms"):
        np.testing.assert_allclose(np.asarray(out[key]), np.asarray(expected[key]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="entry must be"):
        engine.compile("run", state, targets, 0)


def test_term_gradients_match_finite_differences():
    images = standins.targets(2)
    engine = Engine(standins.networks(), SETTINGS)
    latents = np.asarray(engine.invert(images)["ws"], np.float32)
    terms, norms = engine.term_gradients(latents, images)
    assert terms.shape == norms.shape == (2, 4) and np.all(norms > 0)
    final = np.asarray(engine.evaluate(latents, images)["terms"])
    np.testing.assert_allclose(terms, final, rtol=1e-5, atol=1e-7)
    # Central differences along every coordinate of image 0's latent, as one batch of 2 * L * D latents.
    n, h = latents[0].size, 1e-3
    steps = h * np.eye(n, dtype=np.float32).reshape(n, *latents.shape[1:])
    probes = np.concatenate([latents[0] + steps, latents[0] - steps])
    probe_terms, _ = engine.term_gradients(probes, np.repeat(images[:1], 2 * n, axis=0))
    grad_4xN = ((probe_terms[:n] - probe_terms[n:]) / (2 * h)).T
    np.testing.assert_allclose(np.linalg.norm(grad_4xN, axis=1), norms[0], rtol=2e-2, atol=1e-6)


def test_batch_invariance():
    images = standins.targets(8)
    batch = _invert(images)
    alone = _invert(images[3:4])
    np.testing.assert_allclose(np.asarray(batch["ws"][3]), np.asarray(alone["ws"][0]), atol=standins.BATCH_ATOL)


def test_nonfinite_image_is_frozen_and_reported_others_unaffected():
    """A NaN in one target makes that image's loss non-finite from the first step: it is reported failed and its
    latent never leaves its start (w_avg, the last finite latent it had); the other images get the latents
    they get when inverted without it."""
    images = standins.targets(4)
    bad = images.copy()
    bad[2, 0, 0, 0] = np.nan
    engine = Engine(standins.networks(), SETTINGS)
    broken = engine.invert(bad)
    assert np.asarray(broken["failed"]).tolist() == [False, False, True, False]
    ws, start = np.asarray(broken["ws"]), np.asarray(engine.init(4).latent)
    np.testing.assert_array_equal(ws[2], start[2])  # frozen: not one step taken
    assert np.abs(ws[[0, 1, 3]] - start[[0, 1, 3]]).max(axis=(1, 2)).min() > 1e-3  # the others were optimised
    without = _invert(images[[0, 1, 3]])
    # Batch invariance, as in test_batch_invariance: same latents up to float reduction order.
    np.testing.assert_allclose(ws[[0, 1, 3]], np.asarray(without["ws"]), atol=standins.BATCH_ATOL)


def test_an_image_failing_mid_run_keeps_its_last_finite_latent_and_state():
    """Steps 0-3 on clean targets, 4-5 with a NaN in image 2's target, 6-11 clean again: image 2 keeps the latent
    and Adam state it had after step 3 to the end (the failure is sticky, even once its loss is finite again);
    the other images follow the run that never saw the NaN."""
    images = standins.targets(4)
    bad = images.copy()
    bad[2, 0, 0, 0] = np.nan
    engine = Engine(standins.networks(), dataclasses.replace(SETTINGS, compute=ComputeOptions(donate="off")))
    clean_t, bad_t = engine.prepare(images), engine.prepare(bad)
    state = engine.init(4)
    for step in range(4):
        state = engine.step(state, clean_t, step)
    assert not np.any(np.asarray(state.failed))
    last_finite = jax.tree.map(lambda a: np.array(a[2]), (state.latent, state.opt))
    reference, broken = state, state
    for step in range(4, 12):
        reference = engine.step(reference, clean_t, step)
        broken = engine.step(broken, bad_t if step in (4, 5) else clean_t, step)
    assert np.asarray(broken.failed).tolist() == [False, False, True, False]
    frozen = jax.tree.map(lambda a: np.asarray(a[2]), (broken.latent, broken.opt))
    jax.tree.map(np.testing.assert_array_equal, frozen, last_finite)
    assert np.abs(np.asarray(reference.latent[2]) - last_finite[0]).max() > 1e-4  # unfrozen, it would have moved
    keep = [0, 1, 3]
    np.testing.assert_array_equal(np.asarray(broken.latent)[keep], np.asarray(reference.latent)[keep])


def test_w_space_and_noise_stage():
    settings = InversionSettings(
        phases=(Phase(5, mse=1.0, lpips=1.0),), latent_space="w", noise_phase=NoisePhase(5, lr=0.05), chunk_steps=5
    )
    out = _invert(standins.targets(2), settings)
    ws = np.asarray(out["ws"])
    np.testing.assert_array_equal(ws[:, 0], ws[:, -1])  # one w for every layer
    assert len(out["noise"]) == 1 and out["noise"][0].shape == (2, standins.RES, standins.RES)
    assert np.abs(np.asarray(out["noise"][0])).max() > 0


def test_missing_networks_are_refused():
    nets = standins.networks()

    with pytest.raises(ConfigError, match="'magec', which the networks given cannot compute"):
        Engine(dataclasses.replace(nets, linknet=None), SETTINGS)
    with pytest.raises(ConfigError, match="'id', which the networks given cannot compute"):
        Engine(dataclasses.replace(nets, identity=None), SETTINGS)
    with pytest.raises(ConfigError, match="unknown loss term 'bogus'"):
        Engine(nets, InversionSettings(phases=(Phase(2, mse=1.0, bogus=1.0),)))


@pytest.mark.slow
def test_eight_simulated_devices_give_the_same_latents(tmp_path):
    images = standins.targets(8)
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, jax
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        jax.config.update("jax_default_matmul_precision", "highest")
        assert jax.device_count() == 8, jax.devices()
        import engine_standins as standins
        from test_engine import SETTINGS
        from magec_jax.inversion.engine import Engine
        out = Engine(standins.networks(), SETTINGS).invert(np.load({str(tmp_path / 'images.npy')!r}))
        assert len(out["ws"].sharding.device_set) == 8
        np.save({str(tmp_path / 'ws8.npy')!r}, np.asarray(out["ws"]))
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    one = np.asarray(_invert(images)["ws"])
    np.testing.assert_allclose(np.load(tmp_path / "ws8.npy"), one, atol=standins.BATCH_ATOL)

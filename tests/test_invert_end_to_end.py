"""The inversion job (docs/commands.md) on real networks: a tiny StyleGAN2 bundle with real LPIPS, faceres
identity and the faceres+emotion descriptor, run through `python -m magec_jax.invert` on real CelebA-HQ faces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bundle_tools import TINY, tiny_bundle
from conftest import REPO, require_shared
from magec_jax.bundle import load_bundle
from magec_jax.errors import FileFormatError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("tiny"))


def test_bundle_networks_are_consistent(bundle):
    nets = load_bundle(bundle).networks()
    assert (nets.num_ws, nets.w_dim, nets.resolution) == (TINY.num_ws, TINY.w_dim, 32)
    assert nets.directions.shape == (3, TINY.w_dim)
    assert nets.descriptor.attribute_names == ("Male", "Young", "Smiling")
    assert len(nets.noise_init) == 2 * 4 - 1
    # faceres serves as identity and inside the descriptor: stored once.
    manifest = load_bundle(bundle).manifest
    assert manifest["identity"]["path"] == manifest["descriptor"]["faceres"] == "faceres"
    assert not (bundle / "identity").exists()


def test_bundle_validation_names_the_missing_part(bundle, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    shutil.rmtree(broken / "linknet")
    with pytest.raises(FileFormatError, match="linknet.*missing"):
        load_bundle(broken)
    with pytest.raises(FileFormatError, match="not a model bundle"):
        load_bundle(tmp_path)


@pytest.mark.slow
def test_invert_cli_on_real_faces(bundle, tmp_path):
    faces = require_shared("data", "celeba_hq")
    images = tmp_path / "faces"
    images.mkdir()
    for src in sorted((faces / "female").glob("*.jpg"))[:2] + sorted((faces / "male").glob("*.jpg"))[:1]:
        (images / src.name).write_bytes(src.read_bytes())
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "magec_jax.invert", f"--config={REPO / 'configs' / 'tiny.py'}",
           f"--config.bundle={bundle}", f"--config.images={images}", f"--config.out_dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 10/10" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done"] == 3 and summary["steps"] == 10
    for name in [p.stem for p in images.glob("*.jpg")]:
        with np.load(out / f"{name}.npz") as z:
            assert z["w"].shape == (1, TINY.num_ws, TINY.w_dim)
        losses = json.loads((out / f"{name}.json").read_text())["losses"]
        assert all(np.isfinite(v) for v in losses.values()) and 0 < losses["id"] < 2
    # The second run finds everything done.
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert again.returncode == 0 and "3 already done, 0 to do" in again.stderr


def test_cli_reports_a_bad_bundle_in_one_line(tmp_path):
    cmd = [sys.executable, "-m", "magec_jax.invert", f"--config={REPO / 'configs' / 'tiny.py'}",
           f"--config.bundle={tmp_path}", f"--config.images={tmp_path}", f"--config.out_dir={tmp_path / 'o'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path}: not a model bundle")


@pytest.mark.slow
def test_loss_decreases_on_the_real_tiny_generator(bundle):
    """MSE + LPIPS inversion of images the tiny generator made itself: the loss at least halves."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from magec_jax.inversion.engine import Engine, InversionSettings, Phase

    nets = dataclasses.replace(load_bundle(bundle).networks(), identity=None, descriptor=None, linknet=None,
                               directions=None)
    shape = (2, TINY.num_ws, TINY.w_dim)
    w_avg = jnp.broadcast_to(nets.w_avg, shape)
    targets = nets.synthesize(nets.generator, w_avg + 0.5 * jax.random.normal(jax.random.key(3), shape), None)
    start_images = nets.synthesize(nets.generator, w_avg, None)
    start = np.asarray(jnp.mean(jnp.square(start_images - targets), axis=(1, 2, 3))
                       + nets.lpips(nets.lpips_variables, start_images, targets))
    settings = InversionSettings(phases=(Phase(60, mse=1.0, lpips=1.0),), lr=0.05, lr_decay_every=30, chunk_steps=20)
    out = Engine(nets, settings).invert(targets)
    final = np.asarray(out["terms"][:, 0] + out["terms"][:, 1])
    assert np.all(final < 0.5 * start), (start, final)


@pytest.mark.slow
def test_edit_grid_stage_after_inversion(bundle, tmp_path):
    from PIL import Image

    from magec_jax import invert as invert_cli
    from magec_jax.inversion.protocols import job_config

    faces = sorted((require_shared("data", "celeba_hq") / "male").glob("*.jpg"))[:2]
    images = tmp_path / "faces"
    images.mkdir()
    for src in faces:
        (images / src.name).write_bytes(src.read_bytes())
    config = job_config("magec", steps_scale=0.02)
    config.bundle, config.images, config.out_dir = str(bundle), str(images), str(tmp_path / "out")
    config.edit_grid.attributes = ("Male", "Smiling")
    config.edit_grid.strengths = (-3.0, 3.0)
    invert_cli.run(config)
    grid = np.asarray(Image.open(tmp_path / "out" / "edit_grid.png").convert("RGB"))
    per_image = [np.asarray(Image.open(tmp_path / "out" / "edits" / f"{f.stem}.png").convert("RGB")) for f in faces]
    assert per_image[0].shape[:2] == (2 + 2 * 34, 2 + 4 * 34)  # 2 rows of input | recon | 2 edits, 32 px tiles
    # edit_grid.png: every tile of every per-image grid, labelled (a header line, a title per image, a margin).
    assert grid.shape[0] > sum(g.shape[0] for g in per_image) and grid.shape[1] > per_image[0].shape[1]
    windows = np.lib.stride_tricks.sliding_window_view(grid, (32, 32, 3))[:, :, 0]
    for g in per_image:
        for r, c in ((0, 0), (1, 3)):
            tile = g[2 + r * 34: 2 + r * 34 + 32, 2 + c * 34: 2 + c * 34 + 32]
            assert np.all(windows == tile, axis=(2, 3, 4)).sum() >= 1
    for f in faces:
        assert (tmp_path / "out" / "edits" / f.stem / "ifg_Male_+3.npz").exists()

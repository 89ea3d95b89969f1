"""The edit tool: edits as documented, rendering with the inversion's noise maps, grids, edited latents,
resume, one-line errors; end to end on latents of a tiny Image2StyleGAN++ inversion (so they carry noise)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from bundle_tools import TINY
from conftest import REPO
from magec_jax import edit as edit_cli
from magec_jax import images as imio
from magec_jax import invert as invert_cli
from magec_jax.bundle import build_bundle, update_manifest
from magec_jax.editing.directions import fit_ganspace, ganspace_edit, load_ganspace, save_ganspace
from magec_jax.editing.render import Edit, Renderer, load_latent, map_batches, parse_floats
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.inversion.protocols import job_config
from magec_jax.models import stylegan2
from magec_jax.weights import Converted, save_converted

TILE = TINY.img_resolution + 2  # imio.grid pads 2 px


def _noisy_generator(dst: Path) -> Path:
    """The tiny random generator with noise strengths 0.5 (NVIDIA initialises them to 0), so that the noise maps
    an Image2StyleGAN++ inversion optimises change the image."""
    variables = jax.tree.map(np.asarray, stylegan2.init_generator(TINY, jax.random.key(0)))
    for layer in variables["params"]["synthesis"].values():
        for conv in layer.values():
            if "noise_strength" in conv:
                conv["noise_strength"] = np.float32(0.5)
    return save_converted(dst, Converted(kind="stylegan2", config=TINY.to_dict(), variables=variables))


def _faces(folder: Path, n: int) -> list[Path]:
    """``n`` seeded smooth colour images (the generator is random: content does not matter here)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        p = folder / f"face{i}.png"
        Image.fromarray(small).resize((48, 48), Image.BILINEAR).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A generator-only bundle with two directions and a GANSpace entry, and a tiny i2spp inversion."""
    root = tmp_path_factory.mktemp("edit")
    rng = np.random.default_rng(1)
    dirs = rng.standard_normal((2, TINY.w_dim)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    bundle = build_bundle(root / "bundle", generator=_noisy_generator(root / "gen"),
                          directions={"Smiling": dirs[0], "Male": dirs[1]}, w_avg_samples=500).path
    cfg, variables = stylegan2.load_generator(bundle / "generator")
    z = jax.random.normal(jax.random.key(2), (500, cfg.z_dim))
    w = np.asarray(stylegan2.Generator(cfg).apply(variables, z, None, method="mapping")[:, 0])
    save_ganspace(bundle / "ganspace.npz", fit_ganspace(w, 8))
    update_manifest(bundle, ganspace="ganspace.npz")
    images = _faces(root / "faces", 3)
    config = job_config("i2spp", steps_scale=0.005)  # 5 w+ steps, then 5 noise steps
    config.bundle, config.images, config.out_dir, config.batch_size = str(bundle), str(root / "faces"), str(root / "inv"), 4
    config.inversion.chunk_steps = 5
    summary = invert_cli.run(config)
    assert summary["done"] == 3
    return dict(root=root, bundle=bundle, images=images, inv=root / "inv", directions=dict(Smiling=dirs[0]))


def _tile(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    top, left = 2 + row * TILE, 2 + col * TILE
    return grid[top: top + TINY.img_resolution, left: left + TINY.img_resolution].astype(np.int32)


@pytest.mark.slow
def test_edit_cli_end_to_end(setup, tmp_path):
    out = tmp_path / "edits"
    inv = setup["inv"]
    argv = [str(inv / "face0.npz"), str(inv / "face1.npz"), "--bundle", str(setup["bundle"]), "--out", str(out),
            "--attribute", "Smiling", "--strengths", "-3,0,3", "--component", "1", "--layers", "0:4",
            "--gs-strengths", "-2,2", "--interpolate-to", str(inv / "face2.npz"), "--steps", "3", "--batch-size", "4"]
    assert edit_cli.main(argv) == 0
    rows = [["ifg_Smiling_-3", "ifg_Smiling_+0", "ifg_Smiling_+3"], ["gs_c1_l0-4_-2", "gs_c1_l0-4_+2"],
            ["interp_face2_0.000", "interp_face2_0.500", "interp_face2_1.000"]]
    pca = load_ganspace(setup["bundle"] / "ganspace.npz")
    other = load_latent(inv / "face2.npz")
    cfg, variables = stylegan2.load_generator(setup["bundle"] / "generator")
    renderer = Renderer(stylegan2.synthesize_fn(cfg), variables, stylegan2.noise_buffers(cfg, variables), batch_size=1)
    for name, source in (("face0", setup["images"][0]), ("face1", setup["images"][1])):
        lat = load_latent(inv / f"{name}.npz")
        assert lat.noise is not None and lat.image == source  # the i2spp noise stage, and the JSON's image
        with_const_noise = imio.to_uint8(renderer(lat.w_LxD[None])[0]).astype(np.int32)
        record = json.loads((out / f"{name}.json").read_text())
        assert record["rows"] == rows
        grid = np.asarray(Image.open(out / f"{name}.png"))
        assert grid.shape == (2 + 3 * TILE, 2 + 5 * TILE, 3)
        # Column 0: the input by the job's policy; column 1: G(w) with the optimised noise, as the job saved it.
        recon = np.asarray(Image.open(inv / f"{name}.png")).astype(np.int32)
        x = imio.to_uint8(imio.load_image(source, TINY.img_resolution)).astype(np.int32)
        for r in range(3):
            np.testing.assert_array_equal(_tile(grid, r, 0), x)
            assert np.abs(_tile(grid, r, 1) - recon).max() <= 1
        assert np.abs(with_const_noise - recon).max() > 10  # so the tiles above used the optimised noise
        assert np.abs(_tile(grid, 0, 3) - recon).max() <= 1  # strength 0 is the reconstruction
        assert np.abs(_tile(grid, 0, 4) - recon).max() > 10  # strength 3 changes it
        assert np.abs(_tile(grid, 2, 2) - recon).max() <= 1  # interpolation at t = 0
        np.testing.assert_array_equal(_tile(grid, 1, 4), 255)  # row padding is white
        # Edited latents: key w [1, L, D] and the source's noise maps.
        with np.load(out / name / "ifg_Smiling_+3.npz") as z:
            np.testing.assert_allclose(z["w"][0], lat.w_LxD + 3.0 * setup["directions"]["Smiling"], atol=1e-6)
            np.testing.assert_array_equal(z["noise_0"], lat.noise[0])
        with np.load(out / name / "gs_c1_l0-4_-2.npz") as z:
            np.testing.assert_allclose(z["w"][0], np.asarray(ganspace_edit(lat.w_LxD, pca, 1, -2.0, (0, 4))), atol=1e-6)
            assert np.allclose(z["w"][0][4:], lat.w_LxD[4:]) and not np.allclose(z["w"][0][:4], lat.w_LxD[:4])
        with np.load(out / name / "interp_face2_0.500.npz") as z:
            np.testing.assert_allclose(z["w"][0], (lat.w_LxD + other.w_LxD) / 2, atol=1e-6)
    # A rerun with the same edits skips both latents and rewrites nothing.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    logs: list[str] = []
    edit_cli.run(argv, log=logs.append)
    assert "2 already done" in logs[0]
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_edit_cli_reports_bad_input_in_one_line(setup, tmp_path):
    cmd = [sys.executable, "-m", "magec_jax.edit", str(setup["inv"]), "--bundle", str(setup["bundle"]),
           "--out", str(tmp_path), "--attribute", "Nope"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: no InterFaceGAN direction 'Nope' in the bundle (it has: Male, Smiling)"]
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(FileFormatError, match=f"^{bad}: unreadable latent file"):
        load_latent(bad)
    np.savez(tmp_path / "now.npz", v=np.zeros(3))
    with pytest.raises(FileFormatError, match="no key 'w'"):
        load_latent(tmp_path / "now.npz")
    with pytest.raises(MagecError, match="--strengths: expected comma-separated numbers"):
        parse_floats("1,x", "--strengths")
    assert parse_floats("-3:3:4", "--strengths") == (-3.0, -1.0, 1.0, 3.0)
    assert parse_floats("-3,0,3", "--strengths") == (-3.0, 0.0, 3.0)
    with pytest.raises(MagecError, match="--layers: expected START:END"):
        edit_cli.parse_args([str(setup["inv"]), "--bundle", "b", "--out", "o", "--component", "0", "--layers", "3"])


def test_edit_inverse_and_labels():
    e = Edit("interfacegan", 3.0, attribute="Smiling")
    assert e.inverse() == Edit("interfacegan", -3.0, attribute="Smiling") and e.inverse().inverse() == e
    assert e.label == "ifg_Smiling_+3"
    assert Edit("ganspace", -20.0, component=46, layers=(4, 5)).label == "gs_c46_l4-5_-20"
    assert Edit("ganspace", 1.5, component=0).label == "gs_c0_lall_+1.5"
    assert Edit("interfacegan", 1.0, attribute="Big Nose/x").label == "ifg_Big_Nose_x_+1"


def test_map_batches_pads_and_cuts():
    calls = []

    def fn(a, b):
        calls.append(a.shape)
        return a * 2 + b.sum(axis=1), (a,)

    a = np.arange(7, dtype=np.float32)
    b = np.ones((7, 3), np.float32)
    out, (same,) = map_batches(fn, a, b, batch_size=3)
    np.testing.assert_array_equal(out, a * 2 + 3)
    np.testing.assert_array_equal(same, a)
    assert calls == [(3,), (3,), (3,)]  # one shape: the last batch is padded

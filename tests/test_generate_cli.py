"""``python -m magec_jax.generate``: fixture parity through the real command line, seeds, grids, bad inputs."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, require_shared
from PIL import Image

from magec_jax import generate
from magec_jax import images as imio
from magec_jax.models.stylegan2 import StyleGAN2Config, init_generator, seed_latents
from magec_jax.weights import Converted, save_converted
from ports.stylegan2 import convert_nvidia_pkl

ATOL_IMG = 5e-5  # as tests/test_ports_stylegan2.py (fixture README noise figures)
TINY = StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=8, channel_base=64, channel_max=8, mapping_layers=2)


@pytest.fixture(scope="module")
def ada32(tmp_path_factory):
    """ada32 G_ema converted, and its cases."""
    folder = require_shared("fixtures", "stylegan2_nvidia")
    dst = tmp_path_factory.mktemp("ada32") / "g"
    save_converted(dst, convert_nvidia_pkl(folder / "ada32.pkl"))
    return dst, dict(np.load(folder / "cases_ada32.npz"))


def _tiny(path, cfg=TINY):
    """A random generator with non-zero biases and noise strengths (NVIDIA initialises them to 0)."""
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda x: np.asarray(x) + 0.2 * rng.standard_normal(x.shape).astype(np.float32),
        init_generator(cfg, jax.random.key(0)),
    )
    return save_converted(path, Converted(kind="stylegan2", config=cfg.to_dict(), variables=variables))


@pytest.mark.slow
def test_cli_subprocess_reproduces_fixture_images(ada32, tmp_path):
    gen, cases = ada32
    np.save(tmp_path / "z.npy", cases["z"])
    out = tmp_path / "img.npy"
    cmd = [sys.executable, "-m", "magec_jax.generate", "--generator", str(gen), "--z-file", str(tmp_path / "z.npy"),
           "--out-npy", str(out)]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    images = np.load(out)
    assert images.dtype == np.float32 and images.shape == (4, 32, 32, 3)
    np.testing.assert_allclose(images.transpose(0, 3, 1, 2), cases["img_const"], rtol=0, atol=ATOL_IMG)


def test_cli_w_file_truncation_and_noise_mode(ada32, tmp_path):
    gen, cases = ada32
    np.save(tmp_path / "wplus.npy", cases["wplus"])
    np.save(tmp_path / "ws.npy", cases["ws_psi1"][:, 0])  # [B, w_dim]
    cases_out = {
        "img_wplus_none": ["--w-file", tmp_path / "wplus.npy", "--noise-mode", "none"],
        "img_psi05_const": ["--w-file", tmp_path / "ws.npy", "--truncation-psi", "0.5", "--batch-size", "3"],
    }
    for key, args in cases_out.items():
        out = tmp_path / f"{key}.npy"
        assert generate.main(["--generator", str(gen), *map(str, args), "--out-npy", str(out)]) == 0
        np.testing.assert_allclose(np.load(out).transpose(0, 3, 1, 2), cases[key], rtol=0, atol=ATOL_IMG, err_msg=key)


def test_seeds_are_drawn_like_nvidia():
    assert generate.parse_seeds("0-2,7") == [0, 1, 2, 7]
    z = seed_latents([3, 5], 16)
    np.testing.assert_array_equal(z[1:], np.random.RandomState(5).randn(1, 16).astype(np.float32))
    assert z.dtype == np.float32


@pytest.mark.slow
def test_png_grid_and_random_noise(tmp_path):
    gen = _tiny(tmp_path / "g")
    png = tmp_path / "grid.png"
    assert generate.main(["--generator", str(gen), "--seeds", "0-4", "--out", str(png)]) == 0
    assert Image.open(png).size == (3 * 8, 2 * 8)  # 5 images on a 3-wide grid
    outs = []
    for noise_seed in (1, 1, 2):
        outs.append(generate.run(gen, z=seed_latents([0], 8), noise_mode="random", noise_seed=noise_seed))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert np.abs(outs[0] - outs[2]).max() > 1e-4
    pixels = imio.to_uint8(np.array([[[[-1.0, 0.0, 1.0]]]]))
    np.testing.assert_array_equal(pixels, [[[[0, 128, 255]]]])


def test_class_conditional(tmp_path):
    gen = _tiny(tmp_path / "g", dataclasses.replace(TINY, c_dim=3))
    z = seed_latents([0], 8)
    a, b = (generate.run(gen, z=z, class_idx=k) for k in (0, 2))
    assert np.abs(a - b).max() > 1e-4


def test_bad_inputs_get_one_line(tmp_path, capsys):
    gen = _tiny(tmp_path / "g")
    np.save(tmp_path / "bad.npy", np.zeros((2, 7), np.float32))
    np.save(tmp_path / "badw.npy", np.zeros((2, 3, 8), np.float32))
    checks = [
        (["--z-file", str(tmp_path / "bad.npy")], "bad.npy: z has shape [2, 7] (float32), expected float [B, 8]"),
        (["--w-file", str(tmp_path / "badw.npy")], "expected float [B, 8] or [B, 4, 8]"),
        (["--seeds", "0", "--class", "1"], "--class given but the generator is unconditional"),
        (["--seeds", "x"], "--seeds 'x': expected a list like 0-7,12"),
    ]
    for args, says in checks:
        assert generate.main(["--generator", str(gen), *args, "--out-npy", str(tmp_path / "o.npy")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err
    assert generate.main(["--generator", str(tmp_path / "missing"), "--seeds", "0", "--out", "x.png"]) == 2
    assert "not a converted-weights directory" in capsys.readouterr().err
    assert not (tmp_path / "o.npy").exists()

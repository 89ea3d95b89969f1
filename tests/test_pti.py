"""Pivotal tuning: the batched tuner (batch invariance, early stop, divergence, low-rank deltas), the delta file
format and its refusals, the job's ``config.pti`` stage (outputs, resume, refusals, skips) and the tools that
apply a delta (``magec_jax.edit --delta``, ``magec_jax.generate --delta``), on the tiny random generator."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from bundle_tools import TINY, tiny_generator
from magec_jax import edit as edit_cli
from magec_jax import generate as generate_cli
from magec_jax import images as imio
from magec_jax import invert as invert_cli
from magec_jax.bundle import build_bundle, load_bundle
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.configdicts import from_configdict
from magec_jax.inversion import pti_job
from magec_jax.inversion.job import JobConfig
from magec_jax.inversion.protocols import job_config
from magec_jax.inversion.pti import LocalitySettings, PTISettings, Tuner, locality_latents, tune_arrays
from magec_jax.models import deltas, stylegan2

LOWRANK = deltas.DeltaSpec("lowrank", rank=2, groups=("conv", "torgb", "affine"))


def _images(folder, n):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((48, 48), Image.BILINEAR).save(folder / f"img{i}.png")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A generator-only bundle, three images inverted (MSE + LPIPS, 6 steps) and tuned (4 steps, full deltas),
    with the edit grid rendered by the pivots' and by the tuned generators."""
    root = tmp_path_factory.mktemp("pti")
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(TINY.w_dim).astype(np.float32)
    bundle = build_bundle(root / "bundle", generator=tiny_generator(root / "gen"),
                          directions={"Smiling": direction / np.linalg.norm(direction)}, w_avg_samples=500).path
    _images(root / "images", 3)
    config = job_config("wo_magec")
    config.bundle, config.images, config.out_dir, config.batch_size = str(bundle), str(root / "images"), str(root / "out"), 4
    config.inversion.phases = (dict(steps=6, mse=1.0, lpips=1.0),)
    config.inversion.chunk_steps = 3
    config.pti.enabled = True
    config.pti.steps, config.pti.chunk_steps, config.pti.lr, config.pti.lpips_threshold = 4, 2, 3e-3, 0.0
    config.edit_grid.attributes, config.edit_grid.strengths = ("Smiling",), (-2.0, 2.0)
    logs: list[str] = []
    record = invert_cli.run(config, log=logs.append)
    return dict(root=root, bundle=bundle, config=config, out=root / "out", record=record, logs=logs)


def _networks(bundle_path):
    return load_bundle(bundle_path).networks()


@pytest.mark.slow
def test_stage_writes_documented_outputs(tuned):
    out, record = tuned["out"], tuned["record"]
    assert record["done"] == 3 and record["pti"]["done"] == 3 and not record["pti"]["failed"]
    cfg, variables = stylegan2.load_generator(tuned["bundle"] / "generator")
    for i in range(3):
        result = json.loads((out / "pti" / f"img{i}.json").read_text())
        assert result["status"] == "ok" and result["steps"] == 4 and not result["converged"]
        assert result["losses"]["mse"] < result["pivot_losses"]["mse"]  # tuning improves the reconstruction
        assert result["losses"]["lpips"] < result["pivot_losses"]["lpips"]
        assert result["delta"]["kind"] == "full" and result["delta"]["bytes"] > 0
        stored = deltas.load_delta(out / "pti" / f"img{i}.npz")  # plain arrays, no pickle
        assert stored.meta["pivot_sha256"] == result["pivot_sha256"] and stored.generator["source"] == str(tuned["bundle"])
        assert set(stored.delta) == set(deltas.tuned_parameters(variables, deltas.DeltaSpec()))
        # The reconstruction PNG is G(pivot) with the delta applied, rendered outside the stage.
        with np.load(out / f"img{i}.npz") as z:
            w = z["w"]
        image = generate_cli.run(tuned["bundle"] / "generator", ws=w, delta=out / "pti" / f"img{i}.npz")[0]
        png = np.asarray(Image.open(out / "pti" / f"img{i}.png")).astype(int)
        assert np.abs(imio.to_uint8(image).astype(int) - png).max() <= 1
    summary = json.loads((out / "pti" / "summary.json").read_text())
    assert summary["done"] == 3 and summary["runs"][-1]["steps"] == 4
    # The edit grid twice: by the bundle's generator and by each tuned generator; the tuned G(w) tile is the
    # tuned reconstruction.
    assert (out / "edit_grid.png").is_file() and (out / "pti" / "edit_grid.png").is_file()
    edits = json.loads((out / "pti" / "edits" / "img0.json").read_text())
    assert edits["delta"] == str(out / "pti" / "img0.npz")
    sheet = np.asarray(Image.open(out / "pti" / "edits" / "img0.png")).astype(int)
    tile = sheet[2: 2 + TINY.img_resolution, 2 + TINY.img_resolution + 2: 2 + 2 * TINY.img_resolution + 2]
    assert np.abs(tile - np.asarray(Image.open(out / "pti" / "img0.png")).astype(int)).max() <= 1


@pytest.fixture(scope="module")
def retuned(tuned, tmp_path_factory):
    """The tuned folder copied, rerun unchanged (everything done), then with other settings: refused, then
    recomputed with low-rank deltas and the locality regulariser after one pivot was lost."""
    out = tmp_path_factory.mktemp("retuned") / "out"
    shutil.copytree(tuned["out"], out)
    config = tuned["config"].copy_and_resolve_references()
    config.out_dir = str(out)
    config.edit_grid.attributes = ()
    logs: list[str] = []
    stamps = {p: p.stat().st_mtime_ns for p in (out / "pti").glob("img*")}
    unchanged = invert_cli.run(config, log=logs.append)["pti"]
    resumed = dict(record=unchanged, logs=list(logs),
                   untouched=stamps == {p: p.stat().st_mtime_ns for p in (out / "pti").glob("img*")})
    config.pti.delta.kind, config.pti.delta.rank = "lowrank", 2
    config.pti.delta.groups = ("conv", "torgb", "affine")
    config.pti.locality.enabled, config.pti.locality.samples = True, 2
    try:
        invert_cli.run(config, log=logs.append)
        refused = None
    except MagecError as e:
        refused = str(e)
    # A pivot gone (the stage alone, as after an inversion that lost it): the image is skipped with the reason;
    # with recompute the others are tuned again.
    (out / "img1.npz").unlink()
    config.on_mismatch = "recompute"
    logs.clear()
    record = pti_job.run(from_configdict(JobConfig, config), bundle=load_bundle(tuned["bundle"]), log=logs.append)
    return dict(out=out, resumed=resumed, refused=refused, record=record, logs=logs)


@pytest.mark.slow
def test_stage_resumes_refuses_and_skips(retuned):
    resumed = retuned["resumed"]
    assert resumed["record"]["done"] == 0 and resumed["untouched"]
    assert any("3 already tuned" in line for line in resumed["logs"])
    assert retuned["refused"] is not None and "settings.delta.kind: 'full' -> 'lowrank'" in retuned["refused"]
    assert "on_mismatch" in retuned["refused"]
    assert retuned["record"]["done"] == 2
    assert any("pti: skipped img1" in line and "missing pivot" in line for line in retuned["logs"])


@pytest.mark.slow
def test_tuner_batch_invariance_stop_and_divergence(tuned):
    """An image tuned alone equals the same image tuned in a batch; an image at the LPIPS threshold takes no
    step; a non-finite target fails its image only."""
    nets = _networks(tuned["bundle"])
    rng = np.random.default_rng(5)
    images = rng.uniform(-1, 1, (3, TINY.img_resolution, TINY.img_resolution, 3)).astype(np.float32)
    pivots = np.asarray(nets.w_avg)[None, None] + 0.3 * rng.standard_normal((3, TINY.num_ws, TINY.w_dim))
    settings = PTISettings(steps=3, chunk_steps=3, lr=3e-3, lpips_threshold=1e-4)
    tuner = Tuner(nets, settings)
    batch = tune_arrays(nets, images, pivots, tuner=tuner, batch_size=3)
    alone = tune_arrays(nets, images[1:2], pivots[1:2], tuner=tuner, batch_size=1)
    np.testing.assert_allclose(alone["images"][0], batch["images"][1], atol=2e-5)
    # Adam moves every weight by up to lr per step whatever its gradient's size, so float reduction-order noise
    # in a near-zero gradient shows in the delta at a small fraction of lr * steps (9e-3 here), not relative.
    for name, leaf in alone["deltas"][0].items():
        np.testing.assert_allclose(leaf, batch["deltas"][1][name], atol=2e-5, err_msg=name)
    # In one batch: a target equal to G(pivot) (LPIPS about 0, under the threshold: it stops before its first step and its
    # delta stays zero), the image above, and a NaN target, which fails alone.
    mixed_images = images.copy()
    mixed_images[0] = np.asarray(nets.synthesize(nets.generator, jnp.asarray(pivots[:1], jnp.float32), None))[0]
    mixed_images[2, 0, 0, 0] = np.nan
    mixed = tune_arrays(nets, mixed_images, pivots, tuner=tuner, batch_size=3)
    assert mixed["converged"].tolist() == [True, False, False] and mixed["failed"].tolist() == [False, False, True]
    assert mixed["steps"].tolist() == [0, 3, 0]
    assert all(np.all(leaf == 0) for leaf in mixed["deltas"][0].values())
    np.testing.assert_allclose(mixed["images"][1], batch["images"][1], atol=2e-5)
    assert max(tuner.compiled_variants().values()) == 2  # one per batch shape (3 and 1)


@pytest.mark.slow
def test_lowrank_deltas_and_locality(tuned, retuned):
    """The recomputed stage's low-rank deltas: factors of matrices only, far smaller than full deltas, the
    locality term in the loss; a delta file renders the tuned reconstruction outside the stage."""
    out, full_dir = retuned["out"] / "pti", tuned["out"] / "pti"
    result = json.loads((out / "img0.json").read_text())
    assert result["delta"]["kind"] == "lowrank" and result["stop_losses"]["locality"] > 0
    assert result["delta"]["bytes"] < json.loads((full_dir / "img0.json").read_text())["delta"]["bytes"] / 3
    stored = deltas.load_delta(out / "img0.npz")
    assert stored.spec == LOWRANK
    entry = stored.delta["b8/conv1/weight"]
    assert set(entry) == {"a", "b"} and entry["b"].shape[0] == 2
    cfg, variables = stylegan2.load_generator(tuned["bundle"] / "generator")
    with np.load(retuned["out"] / "img0.npz") as z:
        w = z["w"]
    render = stylegan2.synthesize_fn(cfg)(deltas.tuned_variables(variables, out / "img0.npz"), w, None)[0]
    png = np.asarray(Image.open(out / "img0.png")).astype(int)
    assert np.abs(imio.to_uint8(np.asarray(render)).astype(int) - png).max() <= 1
    settings = PTISettings(steps=4, locality=LocalitySettings(enabled=True, samples=2))
    ws = locality_latents(cfg, variables, settings)
    assert ws.shape == (4, 2, TINY.num_ws, TINY.w_dim)
    np.testing.assert_array_equal(ws, locality_latents(cfg, variables, settings))  # seeded, image-independent
    with pytest.raises(ValueError, match="locality_latents"):
        Tuner(load_bundle(tuned["bundle"]).networks(), settings)


def test_delta_files_refuse_other_generators_and_formats(tmp_path):
    _, variables = stylegan2.load_generator(tiny_generator(tmp_path / "g0", seed=0))
    cfg, other = stylegan2.load_generator(tiny_generator(tmp_path / "g1", seed=1))
    spec = deltas.DeltaSpec("lowrank", rank=3, groups=("conv", "bias"))
    delta = deltas.init_delta(variables, spec, jax.random.key(0))
    assert all(set(v) == {"a", "b"} for k, v in delta.items() if k.endswith("conv1/weight"))
    assert all(not isinstance(v, dict) for k, v in delta.items() if k.endswith("bias"))
    # A zero delta leaves the generator's output unchanged.
    ws = jnp.zeros((1, TINY.num_ws, TINY.w_dim))
    synth = stylegan2.synthesize_fn(cfg)
    np.testing.assert_array_equal(np.asarray(synth(deltas.apply_delta(variables, delta), ws, None)),
                                  np.asarray(synth(variables, ws, None)))
    path = deltas.save_delta(tmp_path / "d.npz", delta, spec, deltas.generator_record(cfg, variables, "g0"))
    with np.load(path, allow_pickle=False) as z:  # readable without this project
        assert "synthesis/b8/conv1/weight.a" in z.files and json.loads(str(z["meta"]))["rank"] == 3
    deltas.tuned_variables(variables, path)
    with pytest.raises(FileFormatError, match=r"a weight delta for generator \w+ \(g0\), not for the generator given, \w+ \(g1\)"):
        deltas.tuned_variables(other, path, "g1")
    np.savez(tmp_path / "latent.npz", w=np.zeros((1, TINY.num_ws, TINY.w_dim), np.float32))
    with pytest.raises(FileFormatError, match="not a readable weight delta|not a magec-weight-delta"):
        deltas.load_delta(tmp_path / "latent.npz")
    with pytest.raises(FileFormatError, match="no such weight delta"):
        deltas.load_delta(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="groups"):
        deltas.DeltaSpec(groups=("mapping",))


@pytest.mark.slow
def test_edit_and_generate_apply_deltas(tuned, tmp_path):
    out = tuned["out"]
    argv = [str(out / "img0.npz"), str(out / "img2.npz"), "--bundle", str(tuned["bundle"]), "--out",
            str(tmp_path / "e"), "--attribute", "Smiling", "--strengths", "0", "--delta", str(out / "pti")]
    assert edit_cli.main(argv) == 0
    sheet = np.asarray(Image.open(tmp_path / "e" / "img2.png")).astype(int)
    tile = sheet[2: 2 + TINY.img_resolution, 2 + TINY.img_resolution + 2: 2 + 2 * TINY.img_resolution + 2]
    assert np.abs(tile - np.asarray(Image.open(out / "pti" / "img2.png")).astype(int)).max() <= 1
    # One delta file for two latents, a latent without a delta, a delta of another generator: one line each.
    bad = argv[:-1] + [str(out / "pti" / "img0.npz")]
    with pytest.raises(FileFormatError, match="one weight delta for 2 latents"):
        edit_cli.run(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileFormatError, match="no weight delta for the latent img0"):
        edit_cli.run(argv[:-1] + [str(empty)])
    other = tiny_generator(tmp_path / "other", seed=7)
    code = generate_cli.main(["--generator", str(other), "--w-file", str(out / "img0.npz"), "--delta",
                              str(out / "pti" / "img0.npz"), "--out", str(tmp_path / "g.png")])
    assert code != 0 and not (tmp_path / "g.png").exists()

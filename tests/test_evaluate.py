"""The evaluation: each metric on hand-computed values, the t-test against scipy, the realism features, config
checks, and an end-to-end run (2 methods x 2 real faces x 2 edits on the tiny real-network bundle) through the
library and then the CLI, which must resume without recomputing anything."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from PIL import Image

from bundle_tools import tiny_bundle
from conftest import REPO, require_shared
from magec_jax import images as imio
from magec_jax.bundle import load_bundle
from magec_jax.configdicts import from_configdict
from magec_jax.editing.directions import fit_ganspace, save_ganspace
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.evaluation import features as feats
from magec_jax.evaluation import report
from magec_jax.evaluation.config import EvalConfig
from magec_jax.evaluation.metrics import (
    attribute_probabilities, edit_consistency, improved_target, latent_cycle, mean_or_nan, w_spread,
)
from magec_jax.evaluation.pipeline import run
from magec_jax.evaluation.store import read_scores
from magec_jax.evaluation.stats import betainc, detectable_difference, pairs_for_power, paired_ttest, pearson, student_t_two_sided_p
from magec_jax.metrics.realism import realism_scores
from magec_jax.models import deltas as deltas_lib
from magec_jax.models import lpips as lpips_lib
from magec_jax.models.resize import resize_images
from magec_jax.models import stylegan2
from magec_jax.paths import portable_path
from ports.loss_nets import packaged_lpips

CONFIG = REPO / "configs" / "eval_tiny.py"


def _config(arg: str = ""):
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_tiny", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# ---- metrics on hand-computed values ---------------------------------------------------------------------------


def test_edit_consistency_score_formula():
    # ecs = 2 d(G(w), x_cyc) / (d(G(w), x_edit) + d(x_edit, x_cyc))
    got = edit_consistency([0.1, 0.3, 0.0, 0.2], [0.2, 0.1, 0.5, 0.0], [0.3, 0.2, 0.5, 0.0])
    np.testing.assert_allclose(got[:3], [0.4, 2.0, 0.0], rtol=1e-12)
    assert math.isnan(got[3])  # nothing moved: undefined
    assert mean_or_nan(got) == pytest.approx(0.8)  # means skip the undefined image
    assert math.isnan(mean_or_nan(np.array([np.nan])))


def test_improved_target_and_probabilities():
    np.testing.assert_allclose(improved_target([0.2, 0.9], [0.7, 0.4]), [0.5, -0.5])
    logits = np.array([[0.0, np.log(3.0)], [np.log(3.0), 0.0]])
    np.testing.assert_allclose(attribute_probabilities(logits, "bce"), [[0.5, 0.75], [0.75, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(attribute_probabilities(logits, "softmax_ce"), [[0.25, 0.75], [0.75, 0.25]], rtol=1e-6)


def test_paired_ttest_by_hand():
    # d = [1, 2, 2, 3]: mean 2, sd sqrt(2/3), t = 2 / (sqrt(2/3) / 2) = sqrt(24), df = 3.
    r = paired_ttest([1, 2, 3, 4], [0, 0, 1, 1])
    assert r.statistic == pytest.approx(math.sqrt(24), rel=1e-12) and r.df == 3 and r.n == 4
    assert r.mean_difference == 2.0
    # Student-t closed forms: df = 3: P(|T| >= t) = 1 - 2/pi (theta + sin theta cos theta), theta = atan(t/sqrt 3)
    theta = math.atan(math.sqrt(24) / math.sqrt(3))
    assert r.p_value == pytest.approx(1 - 2 / math.pi * (theta + math.sin(theta) * math.cos(theta)), rel=1e-10)
    for t in (0.3, 1.0, 2.5, 40.0):
        assert student_t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-10)  # Cauchy
        assert student_t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)
    assert student_t_two_sided_p(0.0, 5) == pytest.approx(1.0)
    assert student_t_two_sided_p(math.inf, 5) == 0.0


def test_paired_ttest_matches_scipy():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 17, 200, 1000):
        a = rng.normal(size=n)
        b = a + rng.normal(0.05, 0.3, size=n)
        ours = paired_ttest(a, b)
        ref = scipy.stats.ttest_rel(a, b)
        assert ours.statistic == pytest.approx(ref.statistic, rel=1e-12)
        assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
        ci = ref.confidence_interval(0.95)
        assert (ours.ci_low, ours.ci_high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    for a_, b_, x in [(0.5, 0.5, 0.3), (1.5, 0.5, 0.999), (250.0, 0.5, 0.01), (3.0, 7.0, 0.4), (0.1, 30.0, 0.02)]:
        assert betainc(a_, b_, x) == pytest.approx(scipy.special.betainc(a_, b_, x), rel=1e-11)
    with warnings.catch_warnings():  # scipy warns about the degenerate samples
        warnings.simplefilter("ignore")
        same = scipy.stats.ttest_rel([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])  # every difference 1: t = inf, p = 0
        ours = paired_ttest([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
        assert ours.statistic == same.statistic == math.inf and ours.p_value == same.pvalue == 0.0
        assert math.isnan(paired_ttest([1.0, 2.0], [1.0, 2.0]).statistic)
        assert math.isnan(scipy.stats.ttest_rel([1.0, 2.0], [1.0, 2.0]).statistic)
    assert math.isnan(paired_ttest([1.0], [0.0]).p_value)


def test_pairs_for_power_against_the_noncentral_t():
    def power(n, effect):  # exact two-sided power of the paired t-test (noncentral t)
        t = scipy.stats.t.ppf(0.975, n - 1)
        nc = effect * math.sqrt(n)
        return 1 - scipy.stats.nct.cdf(t, n - 1, nc) + scipy.stats.nct.cdf(-t, n - 1, nc)

    for effect in (0.1, 0.35, 0.5, 1.2, 3.0):
        for target in (0.5, 0.8, 0.95):
            n = pairs_for_power(2.0, -2.0 * effect, power=target)  # only |difference| / sd matters
            assert power(n, effect) >= target  # never too few pairs ...
            assert n <= 3 or power(n - 2, effect) < target  # ... and at most one too many
    assert pairs_for_power(1.0, 0.5) == 34  # the textbook value (Cohen's d = 0.5, alpha 0.05, power 0.8)
    for n in (5, 34, 200):  # the inverse of pairs_for_power: at n pairs, that difference needs n pairs
        delta = detectable_difference(0.3, n)
        assert pairs_for_power(0.3, delta * (1 + 1e-9)) == n and pairs_for_power(0.3, delta * 0.999) > n
    assert math.isnan(detectable_difference(0.3, 1)) and math.isnan(detectable_difference(math.nan, 10))
    for sd, diff in ((0.0, 1.0), (1.0, 0.0), (math.nan, 1.0)):
        with pytest.raises(ValueError):
            pairs_for_power(sd, diff)
    with pytest.raises(ValueError, match="more than 100 pairs"):
        pairs_for_power(1.0, 0.01, max_pairs=100)


def test_latent_cycle_and_spread():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4, 5))
    d = np.broadcast_to(rng.normal(size=5), (3, 4, 5))
    w_edit = w + d
    off = rng.normal(size=(4, 5))
    off -= np.sum(off * d[0]) / np.sum(d[0] * d[0]) * d[0]  # orthogonal to the edit
    w_again = np.stack([w_edit[0], w[1] + 0.5 * d[1], w_edit[2] + off])
    recovered, error = latent_cycle(w, w_edit, w_again)
    np.testing.assert_allclose(recovered, [1.0, 0.5, 1.0], atol=1e-12)
    np.testing.assert_allclose(error, [0.0, 0.5, np.linalg.norm(off) / np.linalg.norm(d[0])], atol=1e-12)
    recovered, error = latent_cycle(w, w, w_again)  # no edit: undefined
    assert np.isnan(recovered).all() and np.isnan(error).all()
    same = np.broadcast_to(rng.normal(size=(2, 1, 5)), (2, 4, 5))
    np.testing.assert_allclose(w_spread(same), 0.0, atol=1e-12)
    two = np.stack([np.zeros(5), np.full(5, 2.0)])[None]  # layers at distance 2 * sqrt(5): sqrt(5) from the mean
    assert w_spread(two)[0] == pytest.approx(math.sqrt(5))
    with pytest.raises(ValueError):
        latent_cycle(w, w_edit, w_again[:2])


def test_pearson():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=30), rng.normal(size=30)
    assert pearson(a, b) == pytest.approx(scipy.stats.pearsonr(a, b).statistic, rel=1e-12)
    b[3] = np.nan
    assert pearson(a, b) == pytest.approx(scipy.stats.pearsonr(np.delete(a, 3), np.delete(b, 3)).statistic)
    assert math.isnan(pearson([1.0, 2.0], [3.0, 4.0])) and math.isnan(pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


# ---- realism features ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_substitute_features_are_the_mean_lpips_relu5_3_tap():
    lpips_vars = packaged_lpips()
    extractor = feats.substitute_extractor(lpips_vars)
    assert extractor.substitute and extractor.name.startswith("substitute:") and "SUBSTITUTE" in extractor.description
    images = jax.random.uniform(jax.random.key(0), (9, 32, 32, 3), minval=-1, maxval=1)
    got = np.asarray(jax.jit(extractor.apply)(extractor.variables, images))
    # Independently: LPIPS's own raw relu5_3 tap of the 224x224 image, averaged over space.
    big = resize_images(images, (224, 224))
    taps = lpips_lib.LPIPS().apply(lpips_vars, big, method="raw_taps")
    np.testing.assert_allclose(got, np.asarray(taps[4].mean(axis=(1, 2))), rtol=1e-5, atol=1e-6)
    assert got.shape == (9, 512)


def test_fc2_extractor_from_a_torchvision_state_dict():
    """The converter's layouts: OIHW convs, an NCHW-flatten fc1, fc2; checked against the same network written
    in torch layout by hand (real VGG16 convs from LPIPS, a small random classifier)."""
    trunk = packaged_lpips()["params"]["features"]
    rng = np.random.default_rng(0)
    width = 8
    state = {}
    for index, p in trunk.items():
        state[f"features.{index}.weight"] = np.asarray(p["kernel"]).transpose(3, 2, 0, 1)
        state[f"features.{index}.bias"] = np.asarray(p["bias"])
    state["classifier.0.weight"] = rng.normal(0, 0.01, (width, 512 * 7 * 7)).astype(np.float32)
    state["classifier.0.bias"] = rng.normal(0, 0.1, width).astype(np.float32)
    state["classifier.3.weight"] = rng.normal(0, 0.3, (width, width)).astype(np.float32)
    state["classifier.3.bias"] = rng.normal(0, 0.1, width).astype(np.float32)
    state["classifier.6.weight"] = np.zeros((1000, width), np.float32)
    state["classifier.6.bias"] = np.zeros(1000, np.float32)
    extractor = feats.vgg16_fc2_from_state_dict(state)
    assert extractor.name == feats.FC2 and not extractor.substitute
    images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3), minval=-1, maxval=1)
    got = np.asarray(jax.jit(extractor.apply)(extractor.variables, images))
    shift, scale = (jnp.asarray(v).reshape(1, 1, 1, 3) for v in (lpips_lib.SHIFT, lpips_lib.SCALE))
    x = (resize_images(images, (224, 224)) - shift) / scale
    relu5_3 = lpips_lib.VGG16Features().apply({"params": trunk}, x)[4]
    pooled = np.asarray(relu5_3).reshape(2, 7, 2, 7, 2, 512).max(axis=(2, 4))  # 2x2/2 max-pool
    flat_nchw = pooled.transpose(0, 3, 1, 2).reshape(2, -1)
    h = np.maximum(flat_nchw @ state["classifier.0.weight"].T + state["classifier.0.bias"], 0)
    want = np.maximum(h @ state["classifier.3.weight"].T + state["classifier.3.bias"], 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    del state["classifier.3.bias"]
    with pytest.raises(FileFormatError, match="incomplete"):
        feats.vgg16_fc2_from_state_dict(state)
    with pytest.raises(FileFormatError, match="^x.pth: not a torchvision VGG16 state dict"):
        feats.vgg16_fc2_from_state_dict({"fc.weight": np.zeros((2, 2))}, source="x.pth")


# ---- config checks -----------------------------------------------------------------------------------------------


def test_config_errors_are_one_line():
    base = _config()
    base.bundle, base.images, base.out_dir = "b", "i", "o"
    from_configdict(EvalConfig, base)
    for field, value, message in [
        ("method_order", ("magec", "nope"), "method_order names 'nope'"),
        ("edit_order", ("ifg_male", "ifg_male"), "must not repeat"),
        ("out_dir", "", "sets no out_dir"),
    ]:
        c = _config()
        c.bundle, c.images, c.out_dir = "b", "i", "o"
        c[field] = value
        with pytest.raises(MagecError, match=message):
            from_configdict(EvalConfig, c)
    c = _config("pti")
    c.bundle, c.images, c.out_dir = "b", "i", "o"
    c.methods.wo_magec.ecs = "no"
    with pytest.raises(MagecError, match="methods.wo_magec.ecs must be a bool, got 'no'"):
        from_configdict(EvalConfig, c)
    for pivots, enabled, message in (("nope", True, "pivots names 'nope', which is not another method"),
                                     ("wo_magec_pti", True, "not another method"),
                                     ("magec", False, "does not tune them")):
        c = _config("pti")
        c.bundle, c.images, c.out_dir = "b", "i", "o"
        c.methods.wo_magec_pti.pivots = pivots
        c.methods.wo_magec_pti.pti.enabled = enabled
        with pytest.raises(MagecError, match=message):
            from_configdict(EvalConfig, c)
    c = _config("pti")
    c.bundle, c.images, c.out_dir = "b", "i", "o"
    c.methods.wo_magec.pivots = "wo_magec_pti"
    c.methods.wo_magec.pti.enabled = True
    with pytest.raises(MagecError, match="whose own pivots come from 'wo_magec'"):
        from_configdict(EvalConfig, c)
    c = _config()
    c.bundle, c.images, c.out_dir = "b", "i", "o"
    c.edits.bad__name = dict(kind="interfacegan", attribute="Male", strength=1.0, target="")
    c.edit_order = ("bad__name",)
    with pytest.raises(MagecError, match="edit name 'bad__name'"):
        from_configdict(EvalConfig, c)
    c.edits.bad__name.kind = "stylegan"
    c.edits.fine = c.edits.bad__name
    c.edit_order = ("fine",)
    with pytest.raises(MagecError, match="kind must be one of 'interfacegan', 'ganspace', 'styleflow'"):
        from_configdict(EvalConfig, c)


# ---- end to end ----------------------------------------------------------------------------------------------------

# Chosen by F on the 32x32 images: 069067 is female to F, 016387 male (most others are male to F at 32x32).
FACES = ("female/069067.jpg", "male/016387.jpg")
REFERENCES = ("female/015248.jpg", "female/030321.jpg", "female/031796.jpg", "male/005735.jpg", "male/006930.jpg")


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    """One evaluation run through the library; returns its paths, networks and log."""
    faces = require_shared("data", "celeba_hq")
    root = tmp_path_factory.mktemp("eval")
    bundle = tiny_bundle(root)
    nets = load_bundle(bundle).networks()
    for folder, names in (("faces", FACES), ("refs", REFERENCES)):
        (root / folder).mkdir()
        for rel in names:
            (root / folder / Path(rel).name).write_bytes((faces / rel).read_bytes())
    cfg, variables = stylegan2.load_generator(bundle / "generator")
    z = jax.random.normal(jax.random.key(5), (1000, cfg.z_dim))
    save_ganspace(root / "pca.npz", fit_ganspace(np.asarray(stylegan2.Generator(cfg).apply(
        variables, z, None, method="mapping")[:, 0]), 8))
    overrides = dict(bundle=str(bundle), images=str(root / "faces"), out_dir=str(root / "out"),
                     ganspace=str(root / "pca.npz"))
    config = _config()
    config.update(overrides)
    config.realism.reference_images = str(root / "refs")
    logs: list[str] = []
    results = run(config, networks=nets, log=logs.append)
    return dict(root=root, out=root / "out", nets=nets, results=results, logs=logs, overrides=overrides)


@pytest.mark.slow
def test_evaluation_outputs_are_complete_and_consistent(evaluation):
    out, nets, results = evaluation["out"], evaluation["nets"], evaluation["results"]
    names = sorted(Path(f).stem for f in FACES)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["means"]["magec"]["mse"] == pytest.approx(results["means"]["magec"]["mse"])
    assert set(results["methods"]) == {"magec", "wo_magec"} and results["reference_method"] == "magec"
    assert results["common"]["reconstruction"] == names
    # ifg_male is scored on the images F calls female; gs_c0 (no target) on all.
    x = np.stack([imio.load_image(out.parent / "faces" / f"{n}.jpg", 32) for n in names])
    logits = np.asarray(jax.jit(nets.descriptor.apply)(nets.descriptor.variables, x))
    female = [n for n, row in zip(names, logits, strict=True) if row[0] <= 0]
    assert female == ["069067"]
    assert results["common"]["edits"] == {"ifg_male": female, "gs_c0": names}
    assert not (out / "magec" / "edits" / "ifg_male__016387.png").exists()
    assert (out / "magec" / "edits" / "ifg_male__069067.png").exists()
    renderer_nets = nets
    render = jax.jit(nets.synthesize)
    for m in ("magec", "wo_magec"):
        method = results["methods"][m]
        for i, n in enumerate(names):
            rec = method["images"][n]
            assert rec["steps"] == 10 and rec["seconds"] > 0
            # MSE as the job reports it: G(w) vs the input image, both in [-1, 1].
            with np.load(out / m / "inversions" / f"{n}.npz") as z:
                img = render(renderer_nets.generator, jnp.asarray(z["w"]), None)
            assert rec["mse"] == pytest.approx(float(jnp.mean(jnp.square(img[0] - x[i]))), rel=1e-4)
        for e in ("ifg_male", "gs_c0"):
            rows = method["edits"][e]
            stored = read_scores(out / m / "scores" / f"{e}.npz", feats.SUBSTITUTE)
            assert sorted(rows) == sorted(stored) == sorted(results["common"]["edits"][e])
            for n, r in rows.items():
                assert r["ecs"] == pytest.approx(2 * r["lpips_gw_cyc"] / (r["lpips_gw_edit"] + r["lpips_edit_cyc"]))
                assert r["lpips_gw_edit"] > 0 and 0 < r["id"] < 2  # 1 - cos(ID(x_edit), ID(x))
                if e == "ifg_male":
                    assert 0 <= r["p_before"] <= 1 and r["t"] == pytest.approx(r["p_after"] - r["p_before"])
                else:
                    assert r["t"] is None or math.isnan(r["t"])
                # The latent cycle, from the files: e(w) as the edit stage wrote it, w' as the re-projection.
                with np.load(out / m / "inversions" / f"{n}.npz") as z, \
                        np.load(out / m / "edits" / f"{e}__{n}.npz") as ze, \
                        np.load(out / m / "reprojections" / f"{e}__{n}.npz") as zr:
                    w, w_edit, w_again = (np.asarray(a["w"], np.float64).reshape(-1) for a in (z, ze, zr))
                d = w_edit - w
                assert r["recovered"] == pytest.approx(np.dot(w_again - w, d) / np.dot(d, d), rel=1e-4, abs=1e-6)
                assert r["cycle_error"] == pytest.approx(np.linalg.norm(w_again - w_edit) / np.linalg.norm(d), rel=1e-4)
            # Realism: the real manifold of real/features.npz against the stored edit features.
            with np.load(out / "real" / "features.npz") as z:
                assert str(z["kind"]) == feats.SUBSTITUTE and len(z["names"]) == len(REFERENCES)
                ref = z["features"]
            order = sorted(rows)
            want = realism_scores(ref, np.stack([stored[n]["features"] for n in order]), k=3).realism
            np.testing.assert_allclose([rows[n]["realism"] for n in order], want, rtol=1e-6)
        # Means over the common images.
        means = results["means"][m]
        assert means["mse"] == pytest.approx(np.mean([method["images"][n]["mse"] for n in names]))
        assert means["ecs/ifg_male"] == pytest.approx(np.mean([method["edits"]["ifg_male"][n]["ecs"] for n in female]))
        assert means["t/ifg_male"] == pytest.approx(np.mean([method["edits"]["ifg_male"][n]["t"] for n in female]))
        assert "t/gs_c0" not in means
    # Paired t-tests of the other method against the reference, as scipy computes them.
    for key, per in (("lpips", lambda m: [results["methods"][m]["images"][n]["lpips"] for n in names]),
                     ("ecs/gs_c0", lambda m: [results["methods"][m]["edits"]["gs_c0"][n]["ecs"] for n in names])):
        ref = scipy.stats.ttest_rel(per("magec"), per("wo_magec"))
        got = results["ttests"][key]["wo_magec"]
        assert got["statistic"] == pytest.approx(ref.statistic, rel=1e-9)
        assert got["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
        d = np.asarray(per("magec")) - np.asarray(per("wo_magec"))
        assert got["detectable"] == pytest.approx(detectable_difference(float(np.std(d, ddof=1)), len(d)))
    # The Markdown table: one row per method with the means, the substitute feature named.
    md = (out / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| method | MSE"))
    assert header.split(" | ")[1:5] == ["MSE", "LPIPS", "steps", "s/image"] and "ECS ifg_male" in header
    row = next(line for line in md.splitlines() if line.startswith("| MAGEC |"))
    assert f"{results['means']['magec']['mse']:.4f}" in row.replace("**", "")
    assert "| w/o MAGEC |" in md and feats.SUBSTITUTE in md and "SUBSTITUTE" in md
    assert "n/a" in md  # one image lacks Male: no t-test on ifg_male
    run = results["run_seconds"]
    assert set(run["methods"]) == {"magec", "wo_magec"} and 0 < sum(run["methods"].values()) <= run["total"]
    assert f"The invocation that wrote this report took {run['total']:.0f} s" in md
    lat = results["latents"]
    for m in ("magec", "wo_magec"):
        spreads = [results["methods"][m]["images"][n]["w_spread"] for n in names]
        assert lat["means"][m]["w_spread"] == pytest.approx(np.mean(spreads)) and min(spreads) > 0
    pooled = [results["methods"][m]["edits"]["gs_c0"][n] for m in ("magec", "wo_magec") for n in names]
    assert lat["ecs_correlation"]["gs_c0"]["n"] == 4
    assert lat["ecs_correlation"]["gs_c0"]["cycle_error"] == pytest.approx(
        np.corrcoef([r["ecs"] for r in pooled], [r["cycle_error"] for r in pooled])[0, 1])
    assert math.isnan(lat["ecs_correlation"]["ifg_male"]["cycle_error"])  # 2 scored pairs: undefined
    assert "| method | W+ spread | recovered ifg_male | cycle error ifg_male |" in md
    # Figures: Fig. 3 grid (2 images x 2 methods rows; input, G(w), 2 edits) and Fig. 4b per (method, edit).
    tile = 34
    assert Image.open(out / "figures" / "comparison.png").size == (2 + 4 * tile, 2 + 4 * tile)
    for m in ("magec", "wo_magec"):
        assert Image.open(out / "figures" / f"ecs_{m}_ifg_male.png").size == (2 + 4 * tile, 2 + 1 * tile)
        assert Image.open(out / "figures" / f"ecs_{m}_gs_c0.png").size == (2 + 4 * tile, 2 + 2 * tile)


@pytest.mark.slow
def test_evaluation_cli_resumes_without_recomputing(evaluation):
    out = evaluation["out"]
    work = [p for p in out.rglob("*") if p.is_file() and "figures" not in p.parts and p.suffix != ".md"
            and p.name not in ("results.json", "images.txt", "reproject.txt", "summary.json")]
    stamps = {p: p.stat().st_mtime_ns for p in work}
    assert any("reprojections" in p.parts for p in stamps) and any("scores" in p.parts for p in stamps)
    refs = evaluation["root"] / "refs"
    cmd = [sys.executable, "-m", "magec_jax.evaluate", f"--config={CONFIG}",
           *(f"--config.{k}={v}" for k, v in evaluation["overrides"].items()), f"--config.realism.reference_images={refs}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("2 images, 2 already done, 0 to do") == 2  # inversions of both methods
    assert proc.stderr.count("3 images, 3 already done, 0 to do") == 2  # re-projections of both methods
    assert "step " not in proc.stderr and "scoring" not in proc.stderr and "rendering" not in proc.stderr
    assert stamps == {p: p.stat().st_mtime_ns for p in work}
    again = json.loads((out / "results.json").read_text())
    assert again["means"] == json.loads(json.dumps(evaluation["results"]["means"], allow_nan=True).replace("NaN", "null"))


def test_cli_reports_a_bad_config_in_one_line(tmp_path):
    cmd = [sys.executable, "-m", "magec_jax.evaluate", f"--config={CONFIG}", f"--config.bundle={tmp_path}",
           f"--config.images={tmp_path}", f"--config.out_dir={tmp_path / 'o'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path}: not a model bundle (no manifest.json); " \
                                                   "build one with python -m magec_jax.bundle"


@pytest.mark.slow
def test_report_names_the_bundle_relative_to_the_working_directory(evaluation, tmp_path, monkeypatch):
    """results.json and results.md name the bundle as ``magec_jax.paths.portable_path`` does, never by the
    absolute path the run was given (the module's run was given one under a temporary folder)."""
    out, results = evaluation["out"], evaluation["results"]
    bundle = Path(evaluation["overrides"]["bundle"])
    assert bundle.is_absolute() and not Path(results["bundle"]).is_absolute()
    assert results["bundle"] == portable_path(bundle)
    for name in ("results.json", "results.md"):
        assert str(evaluation["root"]) not in (out / name).read_text(), name
    assert f"bundle `{results['bundle']}`" in (out / "results.md").read_text()
    # An older results.json with an absolute bundle is shown relative to the working directory.
    monkeypatch.chdir(tmp_path)
    old = dict(results, bundle=str(tmp_path / "demo" / "bundle"))
    assert "bundle `demo/bundle`" in report.markdown(old)


@pytest.mark.slow
def test_tuned_method_on_another_methods_pivots(evaluation, tmp_path):
    """A tuned method (pivotal tuning of w/o MAGEC's pivots) beside the untuned one, on a copy of the module's
    run: the pivots are reused, not inverted again; reconstruction and edits come from each image's tuned
    generator; ECS and the latent cycle are undefined; the identity distance is 1 - cos to the real image."""
    out = tmp_path / "out"
    shutil.copytree(evaluation["out"], out)
    config = _config("pti")
    config.update(dict(evaluation["overrides"], out_dir=str(out)))
    config.realism.reference_images = str(evaluation["root"] / "refs")
    logs: list[str] = []
    nets = evaluation["nets"]
    results = run(config, networks=nets, log=logs.append)
    assert "step " not in "\n".join(line for line in logs if not line.startswith("[0] pti"))  # pivots reused
    assert not (out / "wo_magec_pti" / "inversions").exists() and not (out / "wo_magec_pti" / "reprojections").exists()
    tuned, base = results["methods"]["wo_magec_pti"], results["methods"]["wo_magec"]
    assert tuned["tuned"] and tuned["pivots"] == "wo_magec" and not base["tuned"]
    names = sorted(Path(f).stem for f in FACES)
    x = np.stack([imio.load_image(evaluation["root"] / "faces" / f"{n}.jpg", 32) for n in names])
    fp = deltas_lib.generator_fingerprint({k: v for k, v in nets.generator.items() if k != stylegan2.FROZEN})
    render, embed = jax.jit(nets.synthesize), jax.jit(nets.identity.apply)
    for i, n in enumerate(names):
        record = json.loads((out / "wo_magec_pti" / "pti" / f"{n}.json").read_text())
        assert record["status"] == "ok" and record["steps"] == 18
        row = tuned["images"][n]
        assert row["mse"] == record["losses"]["mse"] and row["lpips"] == record["losses"]["lpips"]
        assert row["steps"] == base["images"][n]["steps"] + 18
        assert row["mse"] < base["images"][n]["mse"]  # tuning moved G(pivot) toward the image
        variables = deltas_lib.tuned_variables(nets.generator, out / "wo_magec_pti" / "pti" / f"{n}.npz",
                                               fingerprint=fp)
        with np.load(out / "wo_magec" / "inversions" / f"{n}.npz") as z:
            w = jnp.asarray(z["w"])
        x_gw = render(variables, w, None)
        assert row["mse"] == pytest.approx(float(jnp.mean(jnp.square(x_gw[0] - x[i]))), rel=1e-3)
        for e, rows in tuned["edits"].items():
            if n not in rows:
                continue
            r = rows[n]
            assert math.isnan(r["ecs"]) and math.isnan(r["recovered"]) and math.isnan(r["lpips_gw_cyc"])
            with np.load(out / "wo_magec_pti" / "edits" / f"{e}__{n}.npz") as ze:
                x_edit = render(variables, jnp.asarray(ze["w"]), None)
                np.testing.assert_array_equal(ze["w"], np.load(out / "wo_magec" / "edits" / f"{e}__{n}.npz")["w"])
            emb = embed(nets.identity.variables, jnp.concatenate([x_edit, jnp.asarray(x[i: i + 1])]))
            assert r["id"] == pytest.approx(1.0 - float(jnp.dot(emb[0], emb[1])), abs=2e-4)
            assert r["id"] != base["edits"][e][n]["id"]  # another generator rendered the same edited latent
    means = results["means"]["wo_magec_pti"]
    assert math.isnan(means["ecs/gs_c0"]) and math.isfinite(means["id/gs_c0"]) and math.isfinite(means["t/ifg_male"])
    assert math.isnan(results["ttests"]["ecs/gs_c0"]["wo_magec_pti"]["p_value"])
    assert results["ttests"]["id/gs_c0"]["wo_magec_pti"]["n"] == 2
    md = (out / "results.md").read_text()
    assert "Tuned methods (pivotal tuning: w/o MAGEC + PTI)" in md and "| w/o MAGEC + PTI |" in md
    tile = 34
    assert Image.open(out / "figures" / "comparison.png").size == (2 + 4 * tile, 2 + 4 * tile)
    assert not (out / "figures" / "ecs_wo_magec_pti_gs_c0.png").exists()
    # w/o MAGEC without its re-projections (ecs off): its ECS and latent cycle are n/a, the rest stays.
    config.methods.wo_magec.ecs = False
    partial = run(config, networks=nets, log=logs.append)
    assert not partial["methods"]["wo_magec"]["reprojected"]
    assert all(math.isnan(r["ecs"]) and math.isnan(r["recovered"]) and math.isfinite(r["id"])
               for r in partial["methods"]["wo_magec"]["edits"]["gs_c0"].values())
    assert partial["means"]["wo_magec"]["t/ifg_male"] == pytest.approx(results["means"]["wo_magec"]["t/ifg_male"])
    assert "Not re-projected (`ecs` off, to save the re-projection): w/o MAGEC" in (out / "results.md").read_text()
    config.methods.wo_magec.ecs = True
    # Resumed: nothing tuned, rendered or scored again.
    logs.clear()
    run(config, networks=nets, log=logs.append)
    assert any("2 pivots, 2 already tuned" in line for line in logs)
    assert not any("scoring" in line or "rendering" in line for line in logs)

"""StyleFlow for a bundle: training (``magec_jax.styleflow``), the prior in the bundle, and StyleFlow edits
(``magec_jax.edit --styleflow`` and :mod:`magec_jax.editing.styleflow`).

The training recipe's pieces are checked one by one on a prior small enough to compile in seconds (the running
statistics' rule, Hutchinson's estimate against the exact divergence, the loss); the whole job runs once on the
tiny face bundle (module fixture), resumes, and its prior then edits through the command line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bundle_tools import tiny_bundle
from magec_jax.bundle import load_bundle
from magec_jax.edit import main as edit_main
from magec_jax.editing.render import Edit, Editor, Renderer
from magec_jax.evaluation.config import EditFields
from magec_jax.editing.styleflow import bundle_editor, parse_changes
from magec_jax.models.styleflow_editor import StyleFlowEditor, load_editor
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.inversion.engine import invert_arrays
from magec_jax.inversion.networks import FlowSupervision
from magec_jax.inversion.settings import InversionSettings, Phase
from magec_jax.inversion.terms import bind_terms, styleflow_edits
from magec_jax.models import styleflow as sf
from magec_jax.models.cnf import ODESolver
from magec_jax.styleflow import main as styleflow_main
from magec_jax.supervision import styleflow as train
from magec_jax.weights import Converted, load_converted, save_converted

SMALL = sf.StyleFlowConfig(w_dim=4, context_dim=2, hidden_dims=(8,))
TIGHT = ODESolver(rtol=1e-7, atol=1e-7)
GRID = ODESolver("rk4", num_steps=8)  # a fixed grid where gradients flow through the solve: compiles in seconds


def _small_variables(seed: int = 0) -> dict:
    variables = sf.StyleFlow(SMALL).init(jax.random.key(seed), jnp.zeros((1, 1, 4)), jnp.zeros((1, 2)))
    # a non-trivial prior: random BatchNorm statistics and scales, as after training
    rng = np.random.default_rng(seed)
    stats = {k: {"running_mean": jnp.asarray(rng.normal(size=4), jnp.float32),
                 "running_var": jnp.asarray(rng.uniform(0.5, 2.0, 4), jnp.float32)} for k in variables["batch_stats"]}
    params = dict(variables["params"])
    for k in ("chain.0", "chain.2"):
        params[k] = {"weight": jnp.asarray(rng.normal(scale=0.3, size=4), jnp.float32),
                     "bias": jnp.asarray(rng.normal(scale=0.3, size=4), jnp.float32)}
    return {"params": params, "batch_stats": stats}


@pytest.mark.slow
def test_training_step_follows_the_official_recipe():
    """One step: BatchNorm normalises with its running statistics, which then move 0.1 towards the batch's mean
    and unbiased variance; the loss is the mean NLL, the exact one up to Hutchinson's noise."""
    variables = _small_variables()
    optimizer = optax.sgd(0.0)  # parameters unchanged: only the statistics move
    step = train._train_step_fn(SMALL, GRID, optimizer, 0.1)
    w = jax.random.normal(jax.random.key(1), (6, 1, 4))
    ctx = jax.random.normal(jax.random.key(2), (6, 2))
    params, stats, _, loss, _ = step(variables["params"], variables["batch_stats"],
                                     optimizer.init(variables["params"]), w, ctx, jax.random.key(3))
    before = variables["batch_stats"]["chain.0"]
    rows = np.asarray(w).reshape(-1, 4)
    np.testing.assert_allclose(stats["chain.0"]["running_mean"], 0.9 * before["running_mean"] + 0.1 * rows.mean(0),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats["chain.0"]["running_var"], 0.9 * before["running_var"] + 0.1 * rows.var(0, ddof=1),
                               rtol=1e-6, atol=1e-6)
    exact = train.nll_per_sample(sf.flow(variables, w, ctx, config=SMALL, divergence="exact", solver=GRID))
    # Hutchinson's estimate is unbiased: the batch mean of 6 samples of a 4-d trace stays within a few nats
    assert abs(float(loss) - float(jnp.mean(exact))) < 2.0
    assert np.isfinite(float(loss)) and jax.tree.all(jax.tree.map(jnp.array_equal, params, variables["params"]))


@pytest.mark.slow
def test_nll_is_the_change_of_variables_density():
    """``nll_per_sample`` of an affine-only prior (zero ODE net) is the Gaussian density of the BatchNorm map."""
    variables = _small_variables()
    zero = jax.tree.map(jnp.zeros_like, variables["params"]["chain.1"])
    variables = {"params": {**variables["params"], "chain.1": {**zero, "sqrt_end_time": jnp.ones(())}},
                 "batch_stats": variables["batch_stats"]}
    w = np.random.default_rng(0).normal(size=(3, 1, 4)).astype(np.float32)
    got = train.nll_per_sample(sf.flow(variables, jnp.asarray(w), jnp.zeros((3, 2)), config=SMALL, divergence="exact",
                                       solver=TIGHT))
    x, log_det = w[:, 0].astype(np.float64), 0.0
    for name in ("chain.0", "chain.2"):
        s, p = variables["batch_stats"][name], variables["params"][name]
        scale = np.exp(np.asarray(p["weight"], np.float64)) / np.sqrt(np.asarray(s["running_var"], np.float64) + 1e-4)
        x = (x - np.asarray(s["running_mean"])) * scale + np.asarray(p["bias"])
        log_det += np.sum(np.log(scale))
    expected = -(np.sum(-0.5 * math.log(2 * math.pi) - 0.5 * x**2, axis=1) + log_det)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def _editor(variables=None, **kw) -> StyleFlowEditor:
    fields = dict(config=SMALL, variables=variables or _small_variables(), context_names=("a", "b"), editable=("a", "b"),
                  mean=np.array([10.0, 0.0]), std=np.array([5.0, 1.0]), low=np.array([0.0, -1.0]),
                  high=np.array([20.0, 1.0]), edit_layers={"a": (0, 1), "b": (2,)}, context_source=None,
                  source="prior", solver=TIGHT)
    return StyleFlowEditor(**{**fields, **kw})


@pytest.mark.slow
def test_edit_rule_layers_and_sequence():
    """Rows outside an attribute's rule keep the current latent bit for bit; sequential edits accumulate the
    context and each reverse solve starts from the one stored z."""
    editor = _editor()
    w = np.random.default_rng(1).normal(size=(2, 4, 4)).astype(np.float32)
    ctx = np.array([[8.0, 0.2], [12.0, -0.3]])
    seq = editor.edit_sequence(w, ctx, (("a", 15.0), ("b", 0.5)))
    assert seq.shape == (2, 2, 4, 4)
    np.testing.assert_array_equal(seq[0][:, 2:], w[:, 2:])  # a: rows 0-1 only
    np.testing.assert_array_equal(seq[1][:, [0, 1, 3]], seq[0][:, [0, 1, 3]])  # then b: row 2 only
    z = editor.encode(w, ctx)
    both = ctx.copy()
    both[:, 0], both[:, 1] = 15.0, 0.5
    np.testing.assert_array_equal(seq[1][:, 2], editor.decode(z, both)[:, 2])
    # an unchanged context gives back the latent (forward and reverse invert each other)
    np.testing.assert_allclose(editor.edit_sequence(w, ctx, (("a", 8.0),))[0, 0], w[0], atol=1e-4)


@pytest.mark.slow
def test_magec_term_edits_every_attribute_as_the_editor_does():
    """The ``magec_styleflow`` term's edits, all attributes in one reverse solve, are the editor's edits one by
    one: each attribute's context moved ``alpha`` standard deviations across F's decision, its layer rule, and
    the flipped label as the target; the loss has a gradient."""
    editor = _editor(solver=GRID)
    signs = np.array([1.0, -1.0])  # context b lowers F's second logit
    layers = np.zeros((2, 4), bool)
    layers[0, [0, 1]], layers[1, 2] = True, True
    flow = FlowSupervision(config=SMALL, variables=editor.variables, mean_M=jnp.asarray(editor.mean, jnp.float32),
                           std_M=jnp.asarray(editor.std, jnp.float32), layers_KxL=jnp.asarray(layers),
                           signs_K=jnp.asarray(signs, jnp.float32), context_apply=None, context_variables=None,
                           solver=GRID)
    w = np.random.default_rng(3).normal(size=(4, 4)).astype(np.float32)
    context = np.array([9.0, 0.3])
    targets = jnp.asarray([0.0, 1.0])  # a absent: moved up; b present: moved so that its logit falls (b up)
    edited, edit_targets = styleflow_edits(flow, flow.arrays(), jnp.asarray(w), jnp.asarray(context, jnp.float32),
                                           targets, alpha=2.0, loss_kind="bce")
    np.testing.assert_array_equal(edit_targets, [[1.0, 1.0], [0.0, 0.0]])
    for k, (name, moved) in enumerate((("a", 9.0 + 2.0 * 5.0), ("b", 0.3 + 2.0 * 1.0))):
        expected = editor.edit_sequence(w[None], context[None], ((name, moved),))[0, 0]
        np.testing.assert_allclose(edited[k], expected, atol=2e-5)
    grad = jax.grad(lambda w_: jnp.sum(styleflow_edits(flow, flow.arrays(), w_, jnp.asarray(context, jnp.float32),
                                                       targets, alpha=2.0, loss_kind="bce")[0] ** 2))(jnp.asarray(w))
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


def test_changes_are_checked_in_one_line():
    editor = _editor()
    assert editor.check_changes((("a", 5.0),), num_ws=4) == []
    (warning,) = editor.check_changes((("a", 25.0),), num_ws=4)
    assert "a=25 is outside the range seen in training [0, 20]" in warning
    with pytest.raises(MagecError, match=r"no StyleFlow attribute 'Age' \(valid: a, b\)"):
        editor.check_changes((("Age", 1.0),), num_ws=4)
    with pytest.raises(MagecError, match="no layer rule for 'a' on a 1-layer latent"):
        editor.check_changes((("a", 1.0),), num_ws=1)
    assert parse_changes("a=1, b=-2.5") == (("a", 1.0), ("b", -2.5))
    for bad in ("a", "a=x", "=1", "a=nan"):
        with pytest.raises(MagecError, match="expected ATTR=VALUE"):
            parse_changes(bad)


@pytest.mark.slow
def test_estimate_raises_the_likelihood():
    """The context estimate maximises the prior's likelihood of the latent: better than the training mean."""
    editor = _editor(solver=GRID)
    w = np.random.default_rng(2).normal(size=(3, 1, 4)).astype(np.float32)
    est = editor.estimate(w, steps=30)

    def nll(ctx):
        out = sf.flow(editor.variables, jnp.asarray(w), editor._normalise(ctx), config=SMALL, divergence="exact",
                      solver=GRID)
        return np.asarray(train.nll_per_sample(out))

    assert np.all(nll(est) < nll(np.tile(editor.mean, (3, 1))))


def test_official_priors_and_bad_priors(tmp_path):
    """A converted official prior (no 'editing' entry) edits with the official context and layer rule; a
    prior of another latent width, or an unknown context without a description, is one line."""
    official = sf.StyleFlowConfig(w_dim=4, context_dim=17, hidden_dims=(8,))
    variables = sf.StyleFlow(official).init(jax.random.key(0), jnp.zeros((1, 1, 4)), jnp.zeros((1, 17)))
    path = save_converted(tmp_path / "official", Converted(kind=sf.KIND, config=official.to_dict(),
                                                           variables=jax.tree.map(np.asarray, variables)))
    editor = load_editor(path, w_dim=4, num_ws=18)
    assert editor.editable == sf.ATTRIBUTE_NAMES and editor.context_names[:9] == tuple(f"light_{i}" for i in range(9))
    assert editor.edit_layers["Expression"] == (4, 5) and editor.low is None
    with pytest.raises(FileFormatError, match="works on 4-wide latents but the generator's w_dim is 8"):
        load_editor(path, w_dim=8, num_ws=18)
    other = save_converted(tmp_path / "other", Converted(kind=sf.KIND, config=SMALL.to_dict(),
                                                         variables=jax.tree.map(np.asarray, _small_variables())))
    with pytest.raises(FileFormatError, match="2 context values and no 'editing' entry"):
        load_editor(other, w_dim=4, num_ws=4)


@pytest.fixture(scope="module")
def flow_bundle(tmp_path_factory) -> tuple[Path, dict, Path]:
    """The tiny face bundle with a StyleFlow prior trained by the job (half the epochs, then resumed)."""
    root = tmp_path_factory.mktemp("styleflow")
    bundle = tiny_bundle(root)
    args = ["--config", str(Path(__file__).parents[1] / "configs" / "styleflow_tiny.py"),
            f"--config.bundle={bundle}", f"--config.out_dir={root / 'run'}"]
    assert styleflow_main(args + ["--config.flow.epochs=1"]) == 0
    first = [json.loads(ln) for ln in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert styleflow_main(args) == 0
    summary = [json.loads(ln) for ln in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    return bundle, {"first": first, "all": summary}, root


@pytest.mark.slow
def test_training_job_stores_the_prior_in_the_bundle(flow_bundle):
    bundle_path, metrics, root = flow_bundle
    bundle = load_bundle(bundle_path)
    assert bundle.manifest["styleflow"] == "styleflow"
    converted = load_converted(bundle_path / "styleflow", kind=sf.KIND)
    editing = converted.manifest["extra"]["editing"]
    assert editing["context_names"] == ["gender_logit", "expected_age", "happy_log_odds"]
    assert converted.config["w_dim"] == 32 and converted.config["hidden_dims"] == [32, 32]
    assert editing["edit_layers"]["expected_age"] == list(range(8))
    steps = [m["step"] for m in metrics["all"] if m["kind"] == "train"]
    assert steps == [4, 6, 8, 12]  # 6 steps per epoch; the second run resumed at step 6 (the first one's end)
    heldout = [m for m in metrics["all"] if m["kind"] == "heldout"]
    assert len(heldout) == 2 and heldout[-1]["step"] == 12 and np.isfinite(heldout[-1]["heldout_nll"])
    assert all(np.isfinite(m["nll"]) and m["nfe"] >= 8 for m in metrics["all"] if m["kind"] == "train")
    editor = bundle_editor(bundle)
    assert editor.context_source["outputs"] == editing["context_names"]
    # another architecture in the same run folder is refused
    args = ["--config", str(Path(__file__).parents[1] / "configs" / "styleflow_tiny.py"),
            f"--config.bundle={bundle_path}", f"--config.out_dir={root / 'run'}", "--config.flow.hidden_dims=16"]
    assert styleflow_main(args) == 2


@pytest.mark.slow
def test_edit_command_styleflow_rows(flow_bundle, tmp_path, capsys):
    bundle_path, _, _ = flow_bundle
    bundle = load_bundle(bundle_path)
    cfg = bundle.generator[0]
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        w = bundle.w_avg()[None, None].repeat(cfg.num_ws, 1) + 0.3 * rng.standard_normal((1, cfg.num_ws, cfg.w_dim))
        np.savez(tmp_path / f"{name}.npz", w=w.astype(np.float32))
    out = tmp_path / "edits"
    argv = [str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--bundle", str(bundle_path), "--out", str(out),
            "--styleflow", "expected_age=30,expected_age=60", "--styleflow", "gender_logit=-20,happy_log_odds=1"]
    assert edit_main(argv) == 0
    err = capsys.readouterr().err
    assert "StyleFlow gender_logit=-20 is outside the range seen in training" in err
    record = json.loads((out / "a.json").read_text())
    assert record["rows"] == [["sf_expected_age_30", "sf_expected_age_30_expected_age_60"],
                              ["sf_gender_logit_-20", "sf_gender_logit_-20_happy_log_odds_1"]]
    assert record["styleflow"]["context_from"] == "descriptor on G(w)"
    w0 = np.load(tmp_path / "a.npz")["w"][0]
    edited = np.load(out / "a" / "sf_expected_age_30.npz")["w"][0]
    assert cfg.num_ws == 8 and not np.allclose(edited, w0)  # the rule's 4-32 px rows are all 8 rows here
    # the contexts from a file, one line for a file that lacks one
    contexts = {n: {"gender_logit": 1.0, "expected_age": 40.0, "happy_log_odds": 0.0} for n in ("a", "b")}
    (tmp_path / "ctx.json").write_text(json.dumps(contexts))
    assert edit_main(argv[:-4] + ["--out", str(tmp_path / "file"), "--styleflow", "expected_age=30",
                                  "--styleflow-attributes", str(tmp_path / "ctx.json")]) == 0
    assert json.loads((tmp_path / "file" / "a.json").read_text())["styleflow"]["context_from"] == "file"
    del contexts["b"]["expected_age"]
    (tmp_path / "ctx.json").write_text(json.dumps(contexts))
    assert edit_main(argv[:-4] + ["--out", str(tmp_path / "bad"), "--styleflow", "expected_age=30",
                                  "--styleflow-attributes", str(tmp_path / "ctx.json")]) == 2
    assert "'b' lacks a number for 'expected_age'" in capsys.readouterr().err
    assert edit_main(argv[:-4] + ["--out", str(tmp_path / "bad"), "--styleflow", "Age=30"]) == 2
    assert "valid: gender_logit, expected_age, happy_log_odds" in capsys.readouterr().err


@pytest.mark.slow
def test_magec_styleflow_term_inverts_with_the_bundle_prior(flow_bundle):
    """The term is available with a bundle whose prior was trained on its F, alone or beside the InterFaceGAN
    MAGEC term, and an inversion with it runs and reports it."""
    bundle_path, _, _ = flow_bundle
    nets = load_bundle(bundle_path).networks()
    assert nets.styleflow is not None and nets.styleflow.layers_KxL.shape == (3, 8)
    assert "magec_styleflow" not in bind_terms(nets, InversionSettings())  # bound only where a phase weights it
    np.testing.assert_array_equal(nets.styleflow.signs_K, [1.0, -1.0, 1.0])  # Young falls as the age rises
    settings = InversionSettings(phases=(Phase(3, dict(mse=1.0, magec=1e-2, magec_styleflow=1e-2)),),
                                 styleflow_steps=2, chunk_steps=3)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    out = invert_arrays(nets, images, settings, batch_size=2)
    assert set(out["terms"]) >= {"mse", "magec", "magec_styleflow"}
    assert np.all(np.isfinite(out["terms"]["magec_styleflow"])) and not out["failed"].any()


@pytest.mark.slow
def test_relative_styleflow_edits_for_the_evaluation(flow_bundle):
    """The evaluation's StyleFlow edit moves the image's own context value (F on G(w)) by ``strength`` training
    standard deviations; its inverse moves it back; a name the prior lacks is one line."""
    bundle_path, _, _ = flow_bundle
    bundle = load_bundle(bundle_path)
    cfg, variables = bundle.generator
    flow = bundle_editor(bundle)
    from_images = train.descriptor_context_fn(bundle, flow.context_source)
    renderer = Renderer(bundle.networks().synthesize, bundle.networks().generator, bundle.networks().noise_init, 4)
    editor = Editor(cfg.num_ws, cfg.w_dim, {}, styleflow=flow, contexts=lambda ws: from_images(renderer(ws)))
    edit = EditFields(kind="styleflow", attribute="expected_age", strength=2.0, target="Young").edit
    assert edit.label == "sf_expected_age_+2sd" and edit.inverse().strength == -2.0
    editor.check(edit)
    w = np.repeat(bundle.w_avg()[None, None], cfg.num_ws, 1) + 0.2 * np.random.default_rng(1).standard_normal(
        (2, cfg.num_ws, cfg.w_dim)).astype(np.float32)
    ctx = from_images(renderer(w))
    k = flow.context_names.index("expected_age")
    moved = ctx[:, k] + 2.0 * flow.std[k]
    np.testing.assert_allclose(editor.apply(edit, w), flow.edit_sequence(w, ctx, (("expected_age", moved),))[0],
                               atol=1e-6)
    with pytest.raises(MagecError, match="no StyleFlow attribute 'Age'"):
        editor.check(Edit("styleflow", 1.0, attribute="Age"))
    with pytest.raises(MagecError, match="needs a prior"):
        Editor(cfg.num_ws, cfg.w_dim, {}).check(edit)

"""StyleFlow's training recipe and editing rule, piece by piece, on a prior small enough to compile in seconds:
the running statistics' rule, Hutchinson's estimate against the exact divergence, the loss, the layer rule and
sequential edits, the attribute estimate, the ``magec_styleflow`` term's edits, official and bad priors.
(The whole job on a tiny bundle, and the tools, are in ``test_edit_styleflow.py``.)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from magec_jax.editing.styleflow import parse_changes
from magec_jax.models.styleflow_editor import StyleFlowEditor, load_editor
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.inversion.networks import FlowSupervision
from magec_jax.inversion.terms import styleflow_edits
from magec_jax.models import styleflow as sf
from magec_jax.models.cnf import ODESolver
from magec_jax.supervision import styleflow as train
from magec_jax.weights import Converted, save_converted

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

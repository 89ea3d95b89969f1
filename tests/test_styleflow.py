"""StyleFlow's prior against the official PyTorch code (``../shared/fixtures/styleflow``, random weights), and its
converter.

Every tolerance below comes from the fixture README's "Observed noise and suggested tolerances":

* the ODE function and the fixed grids are exact arithmetic, so they are compared at float32 noise: the README
  measures the official float32 code against float64 at <= 2e-6 (dy/dt), 2.3e-5 (e^T J e, values up to 29),
  1e-6 (exact trace) and <= 4.4e-6 (fixed-step z), 1.1e-5 (fixed-step logp with the stored noise), and suggests
  1e-5, 1e-4, 1e-5, 2e-5 and 1e-4;
* adaptive dopri5 solves (atol = rtol = 1e-5) take other steps than torchdiffeq (diffrax ends at T, torchdiffeq
  interpolates past it), so they agree only to the solver's accuracy: the official float32 result is itself
  3e-5 (z) and 1.3e-4 (w after the reverse solve) from the exact solution, the Hutchinson noise alone moves z by
  4e-5 and batching by 3e-5; the README's bounds are 2e-4 for z, 1e-3 for reverse-solved w (and the edits),
  1e-2 for the log-density with the stored noise;
* the edit's layer rule copies rows, so the kept rows equal the input bit for bit.

One compiled function per solver setting (forward and reverse share it: ``reverse`` is a traced argument).
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require_shared
from tools import torch_writers as tw
from magec_jax.errors import FileFormatError
from magec_jax.models import styleflow as sf
from magec_jax.models.cnf import ODESolver, exact_divergence, hutchinson_divergence
from ports.convert import convert, main as convert_main
from ports.detect import detect_format
from ports.styleflow import convert_styleflow, convert_styleflow_state_dict
from ports.torch_files import load_torch

FIXTURE = ("fixtures", "styleflow")
SHA256 = "eedf2873752084580135404500ac2f60a85b4583d2d5cc9563d4f1c881a617eb"  # README, item 4 of the weights

ODE_DY, ODE_DLOGP, ODE_TRACE = 1e-5, 1e-4, 1e-5
FIXED_Z, FIXED_LOGP = 2e-5, 1e-4
ADAPTIVE_Z, ADAPTIVE_W, ADAPTIVE_LOGP = 2e-4, 1e-3, 1e-2


@pytest.fixture(scope="module")
def case() -> dict[str, np.ndarray]:
    with np.load(require_shared(*FIXTURE, "cases.npz")) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def prior():
    converted = convert_styleflow(require_shared(*FIXTURE, "styleflow_random.pt"))
    return sf.config_from_dict(converted.config), jax.tree.map(jnp.asarray, converted.variables)


@functools.lru_cache(maxsize=None)
def _flow(config: sf.StyleFlowConfig, solver: ODESolver, divergence: str = "hutchinson"):
    return jax.jit(functools.partial(sf.flow, config=config, solver=solver, divergence=divergence))


def _run(prior, solver, x, ctx_Bx17x1x1, eps, reverse, divergence="hutchinson"):
    config, variables = prior
    ctx = jnp.asarray(ctx_Bx17x1x1.reshape(len(ctx_Bx17x1x1), -1))
    eps = None if eps is None else jnp.asarray(eps)
    return _flow(config, solver, divergence)(variables, jnp.asarray(x), ctx, None, eps, jnp.asarray(reverse))


def _close(actual, expected, atol, what):
    err = float(np.max(np.abs(np.asarray(actual) - expected)))
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol:g}"


# ---- converter ------------------------------------------------------------------------------------------------


def test_converter_reads_dimensions_and_layouts(prior, case):
    path = require_shared(*FIXTURE, "styleflow_random.pt")
    config, variables = prior
    assert detect_format(path) == "styleflow"
    assert config == sf.StyleFlowConfig(w_dim=512, context_dim=17, hidden_dims=(512,) * 5, num_blocks=1)
    keys = json.loads(require_shared(*FIXTURE, "state_dict_keys.json").read_text())
    assert len(keys) == 42  # 39 leaves + 2 BatchNorm step counters + the odefunc's evaluation counter
    assert len(jax.tree.leaves(variables)) == 39
    assert sum(v.size for v in jax.tree.leaves(variables["params"])) == 1_691_649  # README's trainable count
    state = load_torch(path)
    layer = variables["params"]["chain.1"]["odefunc"]["diffeq"]["layers.3"]
    np.testing.assert_array_equal(layer["_hyper_gate"]["kernel"], state["chain.1.odefunc.diffeq.layers.3._hyper_gate.weight"].T)
    np.testing.assert_array_equal(variables["batch_stats"]["chain.2"]["running_var"], state["chain.2.running_var"])
    assert float(variables["params"]["chain.1"]["sqrt_end_time"]) ** 2 == pytest.approx(case["integration_T"], abs=1e-7)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_converter_reads_cuda_saved_files(tmp_path, prior, fmt):
    state = load_torch(require_shared(*FIXTURE, "styleflow_random.pt"))
    path = tmp_path / f"{fmt}.pt"
    writer = tw.write_torch_zip if fmt == "zip" else tw.write_torch_legacy
    writer(path, {k: tw.tensor(np.asarray(v)) for k, v in state.items()}, location="cuda:0")
    converted = convert(path)  # format detected
    assert converted.kind == sf.KIND
    jax.tree.map(np.testing.assert_array_equal, converted.variables, jax.tree.map(np.asarray, prior[1]))


def test_convert_cli_and_loading(tmp_path, prior):
    src = require_shared(*FIXTURE, "styleflow_random.pt")
    dst = tmp_path / "styleflow"
    assert convert_main([str(src), str(dst)]) == 0
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["kind"] == "styleflow" and manifest["source"]["sha256"] == SHA256
    assert manifest["config"]["hidden_dims"] == [512] * 5 and manifest["config"]["context_dim"] == 17
    config, variables = sf.load_styleflow(dst, w_dim=512)
    assert config == prior[0]
    with pytest.raises(FileFormatError) as err:
        sf.load_styleflow(dst, w_dim=256)  # the bundle's generator has another latent width
    assert "\n" not in str(err.value) and str(dst) in str(err.value) and "512" in str(err.value)


def test_other_networks_are_one_line(tmp_path, prior):
    path = tmp_path / "resnet.pth"
    tw.write_torch_zip(path, {"conv1.weight": tw.tensor(np.zeros((2, 3, 1, 1), np.float32)),
                              "fc.weight": tw.tensor(np.zeros((2, 2), np.float32))})
    with pytest.raises(FileFormatError) as err:
        convert(path, fmt="styleflow")
    assert "\n" not in str(err.value) and str(path) in str(err.value) and "not a StyleFlow prior" in str(err.value)
    state = dict(load_torch(require_shared(*FIXTURE, "styleflow_random.pt")))
    del state["chain.2.bias"]
    with pytest.raises(FileFormatError, match=r"incomplete: .*chain\.2/bias"):
        convert_styleflow_state_dict(state)


# ---- structure, on a tiny prior of two CNF blocks ---------------------------------------------------------------


def test_two_blocks_round_trip():
    """Chain order and per-block noise with two CNF blocks (chain.0-4), both directions in one compiled function."""
    config = sf.StyleFlowConfig(w_dim=8, context_dim=3, hidden_dims=(16,), num_blocks=2)
    rng = np.random.default_rng(0)
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    x, ctx = normal(2, 3, 8), normal(2, 3)
    shapes = jax.eval_shape(sf.StyleFlow(config).init, jax.random.key(0), x, ctx)
    assert sorted(shapes["params"]) == ["chain.0", "chain.1", "chain.2", "chain.3", "chain.4"]
    variables = jax.tree.map(lambda leaf: 0.3 * normal(*leaf.shape), shapes)  # numpy: nothing to compile
    variables["batch_stats"] = jax.tree.map(np.exp, variables["batch_stats"])  # running_var > 0
    for block in ("chain.1", "chain.3"):
        variables["params"][block]["sqrt_end_time"] = np.float32(1.0)
    eps = normal(2, 2, 3, 8)  # one Hutchinson draw per block
    run = jax.jit(functools.partial(sf.flow, config=config, divergence="hutchinson",
                                    solver=ODESolver("rk4", num_steps=16)))
    z = run(variables, x, ctx, None, eps, jnp.asarray(False))
    w = run(variables, z.x_BxLxD, ctx, None, eps, jnp.asarray(True))
    # rk4 with 16 steps per block on a smooth tiny net: the reverse solve undoes the forward one to ~1e-6; with the
    # same noise in both directions the log-density state is one ODE run backwards: its change is undone too.
    _close(w.x_BxLxD, x, 1e-4, "round trip x -> z -> x")
    _close(w.logp_BxLx1, -z.logp_BxLx1, 1e-4, "log-density change undone")
    assert float(jnp.max(jnp.abs(z.x_BxLxD - x))) > 0.1  # the flow does move the latents
    np.testing.assert_array_equal(z.nfe_B, [2 * 16 * 4] * 2)  # two blocks of 16 rk4 steps


# ---- the ODE function -----------------------------------------------------------------------------------------


def test_odefunc(prior, case):
    config, variables = prior
    odefunc = sf.ODEfunc(config)
    params = {"params": variables["params"]["chain.1"]["odefunc"]}
    ctx = jnp.asarray(case["attr"].reshape(4, 17))

    @jax.jit
    def both(t, y, e):
        fn = lambda y_: odefunc.apply(params, t, y_, ctx)
        dy, div = hutchinson_divergence(fn, y, e)
        # The exact trace costs 512 Jacobian-vector products: on the first 2 rows of each image only (rows are
        # independent samples, so a subset of rows is the same computation).
        return dy, -div, -exact_divergence(fn, y[:, :2])[1]

    for k, t in enumerate(case["odefunc_t"]):
        dy, dlogp, dlogp_exact = both(t, case["odefunc_y"][k], case["odefunc_e"][k])
        _close(dy, case["odefunc_out"][k], ODE_DY, f"dy/dt at t={t}")
        _close(dlogp, case["odefunc_out_dlogp"][k], ODE_DLOGP, f"-e^T J e at t={t}")
        _close(dlogp_exact, case["odefunc_out_dlogp_exact"][k][:, :2], ODE_TRACE, f"-trace J at t={t}")


# ---- fixed grids: exact arithmetic ----------------------------------------------------------------------------
# The references integrate the 4 cases as one batch; a fixed grid does not depend on the batch, so the first two
# cases alone (half the work) must give the same rows.


def _two(case, key):
    return case[key][:2]


@pytest.mark.slow
def test_rk4_three_eighths_forward_and_reverse(prior, case):
    rk4 = ODESolver("rk4", num_steps=32)
    fwd = _run(prior, rk4, _two(case, "w"), _two(case, "attr"), _two(case, "hutch_e_rk4_forward"), False)
    _close(fwd.x_BxLxD, _two(case, "z_forward_rk4_fixed"), FIXED_Z, "rk4 z")
    _close(fwd.logp_BxLx1, _two(case, "delta_logp_forward_rk4_fixed"), FIXED_LOGP, "rk4 delta logp")
    np.testing.assert_array_equal(fwd.nfe_B, [128] * 2)  # 32 steps of 4 evaluations, as torchdiffeq
    rev = _run(prior, rk4, _two(case, "z_forward_rk4_fixed"), _two(case, "attr"), _two(case, "hutch_e_rk4_reverse"),
               True)
    _close(rev.x_BxLxD, _two(case, "w_reverse_rk4_fixed"), FIXED_Z, "rk4 reverse w")
    _close(rev.logp_BxLx1, _two(case, "logp_reverse_rk4_fixed"), FIXED_LOGP, "rk4 reverse logp")


@pytest.mark.parametrize("method, steps", [("euler", 64), ("midpoint", 32)])
def test_euler_and_midpoint(prior, case, method, steps):
    out = _run(prior, ODESolver(method, num_steps=steps), _two(case, "w"), _two(case, "attr"),
               _two(case, f"hutch_e_{method}_forward"), False)
    _close(out.x_BxLxD, _two(case, f"z_forward_{method}_fixed"), FIXED_Z, f"{method} z")
    _close(out.logp_BxLx1, _two(case, f"delta_logp_forward_{method}_fixed"), FIXED_LOGP, f"{method} delta logp")


def test_without_log_density_the_grid_solution_is_the_same(prior, case):
    """On a fixed grid z does not depend on the log-density state (README), so divergence='none' -- the edit
    mode -- must give the official z at float noise."""
    out = _run(prior, ODESolver("euler", num_steps=64), _two(case, "w"), _two(case, "attr"), None, False,
               divergence="none")
    assert out.logp_BxLx1 is None
    _close(out.x_BxLxD, _two(case, "z_forward_euler_fixed"), FIXED_Z, "euler z without log-density")


# ---- adaptive dopri5 at the official tolerance ----------------------------------------------------------------


@pytest.mark.slow
def test_dopri5_per_image_forward_reverse_and_edits(prior, case):
    """Per-image step control, as the official UI solves each case alone (batch size 1)."""
    solver = ODESolver()
    fwd = _run(prior, solver, case["w"], case["attr"], case["hutch_e_forward"], False)
    _close(fwd.x_BxLxD, case["z_forward"], ADAPTIVE_Z, "dopri5 z")
    _close(fwd.logp_BxLx1, case["delta_logp_forward"], ADAPTIVE_LOGP, "dopri5 delta logp")
    assert np.all(fwd.nfe_B <= 2 * case["nfe_forward"]) and np.all(fwd.nfe_B >= 9)
    rev = _run(prior, solver, case["z_forward"], case["attr"], case["hutch_e_reverse"], True)
    _close(rev.x_BxLxD, case["w_reverse"], ADAPTIVE_W, "dopri5 reverse w")
    _close(rev.logp_BxLx1, case["logp_reverse"], ADAPTIVE_LOGP, "dopri5 reverse logp")
    for kind, names, index in [("edit", sf.ATTRIBUTE_NAMES, "edit_attr_index"), ("edit_light", None, None)]:
        target = case[f"{kind}_attr"]
        raw = _run(prior, solver, case["z_forward"], target, case[f"hutch_e_{kind}"], True).x_BxLxD
        mask = np.stack([sf.edit_layer_mask(names[i] if names else "light") for i in
                         (case[index] if index else range(4))])
        np.testing.assert_array_equal(mask, case[f"{kind}_layer_mask"])
        edited = np.asarray(sf.keep_layers(jnp.asarray(case["w"]), raw, mask))
        raw_key = "w_edit_reverse_raw" if kind == "edit" else "w_light_reverse_raw"
        _close(raw, case[raw_key], ADAPTIVE_W, f"{kind} reverse solve")
        _close(edited, case["w_edited" if kind == "edit" else "w_edited_light"], ADAPTIVE_W, f"{kind} result")
        np.testing.assert_array_equal(edited[~mask], case["w"][~mask])  # kept layers: bit for bit


def test_step_control_per_image_is_batch_independent_and_per_batch_matches_torchdiffeq(prior, case):
    per_image, per_batch = ODESolver(), ODESolver(batch_step_control=True)
    other = case["w"].copy()
    other[3] *= 3.0  # another image in the batch
    batch = _run(prior, per_batch, case["w"], case["attr"], case["hutch_e_forward_batch4"], False)
    _close(batch.x_BxLxD, case["z_forward_batch4"], ADAPTIVE_Z, "dopri5 batch-of-4 z")
    _close(batch.logp_BxLx1, case["delta_logp_forward_batch4"], ADAPTIVE_LOGP, "dopri5 batch-of-4 delta logp")
    assert len(set(np.asarray(batch.num_steps_B).tolist())) == 1  # one step sequence for the batch
    a = _run(prior, per_image, case["w"], case["attr"], case["hutch_e_forward"], False).x_BxLxD
    b = _run(prior, per_image, other, case["attr"], case["hutch_e_forward"], False).x_BxLxD
    _close(b[:3], np.asarray(a[:3]), 1e-6, "per-image solve of images 0-2 with image 3 changed")
    c = _run(prior, per_batch, other, case["attr"], case["hutch_e_forward_batch4"], False).x_BxLxD
    assert float(jnp.max(jnp.abs(c[:3] - batch.x_BxLxD[:3]))) > 1e-6  # shared step control does depend on it

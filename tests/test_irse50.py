"""IR-SE50 and the e4e ID-loss recipe against the golden fixture ``arcface_irse50/cases.npz`` (every key).

The synthetic weights are rebuilt from ``state_dict_spec.json`` exactly as the fixture README says (sha256 of
every tensor checked) and go through ``ports.loss_nets`` from the ``model_ir_se50.pth`` naming.
Tolerances (fixture README, from the reference's own float32/float64 and thread noise): embeddings and ID
losses ``atol=1e-5``; the pooled input ``atol=1e-6``; stage means and the unnormalised output
``rtol=1e-4, atol=1e-4``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_shared
from hlo_dtypes import assert_contractions_in
from loss_net_helpers import load_fixture_state_dict

from magec_jax.models import irse50
from magec_jax.models.interfaces import IdentityEmbedder
from ports.loss_nets import convert_irse50_state_dict

EMB_ATOL = 1e-5
POOL_ATOL = 1e-6
STAGE_TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def cases():
    with np.load(require_shared("fixtures", "arcface_irse50", "cases.npz"), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def variables():
    _, sd = load_fixture_state_dict(require_shared("fixtures", "arcface_irse50", "state_dict_spec.json"))
    return jax.tree_util.tree_map(jnp.asarray, convert_irse50_state_dict(sd).variables)


def _images(u8_NCHW: np.ndarray) -> jax.Array:
    return jnp.asarray(u8_NCHW.transpose(0, 2, 3, 1).astype(np.float32) / np.float32(127.5) - np.float32(1))


@pytest.mark.slow
def test_backbone_at_112(cases, variables):
    out = jax.jit(irse50.IRSE50().apply)(variables, _images(cases["x112_u8"]))
    np.testing.assert_allclose(out.embedding_BxE, cases["feat"], rtol=0, atol=EMB_ATOL)
    np.testing.assert_allclose(out.unnormed_BxE, cases["x112_feat_unnormed"], **STAGE_TOL)
    names = ["x112_input_layer_mean"] + [f"x112_stage{i}_mean" for i in range(1, 5)]
    for name, tap in zip(names, out.taps, strict=True):
        np.testing.assert_allclose(jnp.mean(tap, axis=(1, 2)), cases[name], **STAGE_TOL, err_msg=name)
    np.testing.assert_allclose(jnp.linalg.norm(out.embedding_BxE, axis=-1), 1.0, rtol=1e-6)


def test_id_recipe_at_256(cases, variables):
    x256 = _images(cases["x256_u8"])
    pooled = irse50.id_preprocess(x256)
    np.testing.assert_allclose(pooled, cases["x256_pooled"].transpose(0, 2, 3, 1), rtol=0, atol=POOL_ATOL)
    identity = irse50.irse50_identity(variables)
    assert isinstance(identity, IdentityEmbedder) and identity.name == "irse50"
    feats = jax.jit(identity.apply)(identity.variables, x256)
    np.testing.assert_allclose(feats, cases["id_feat256"], rtol=0, atol=EMB_ATOL)
    a, b = cases["id_pairs"].T
    per_pair = 1.0 - jnp.sum(feats[a] * feats[b], axis=-1)
    np.testing.assert_allclose(per_pair, cases["id_loss_per_pair"], rtol=0, atol=EMB_ATOL)
    np.testing.assert_allclose(jnp.mean(per_pair), cases["id_loss"], rtol=0, atol=EMB_ATOL)


@pytest.mark.slow
def test_id_loss_function_and_other_sizes(cases, variables):
    """``id_loss`` on two fixture pairs, the second side given at 512 (pixel-repeated, area-averaged back)."""
    x256 = _images(cases["x256_u8"])
    pairs = cases["id_pairs"][:2]
    y512 = jnp.repeat(jnp.repeat(x256[pairs[:, 1]], 2, axis=1), 2, axis=2)
    got = jax.jit(irse50.id_loss)(variables, x256[pairs[:, 0]], y512)
    np.testing.assert_allclose(got, cases["id_loss_per_pair"][:2], rtol=0, atol=EMB_ATOL)


def test_identity_apply_is_stable_per_dtype(variables):
    """Engines close over ``apply`` as a static argument: the same setting must give the same function."""
    assert irse50.irse50_identity(variables).apply is irse50.irse50_identity({}).apply
    assert irse50.irse50_identity(variables, dtype=jnp.bfloat16).apply is not irse50.irse50_identity(variables).apply


def test_rejects_wrong_input_size(variables):
    with pytest.raises(ValueError, match=r"\[B, 112, 112, 3\]"):
        irse50.IRSE50().apply(variables, jnp.zeros((1, 128, 128, 3)))


@pytest.mark.slow
def test_bfloat16_option_is_close(cases, variables):
    x = _images(cases["x112_u8"][:2])
    # bf16 really runs: every convolution and matrix product of the network multiplies bf16 operands.
    for dtype, model in (("bf16", irse50.IRSE50(dtype=jnp.bfloat16)), ("f32", irse50.IRSE50())):
        assert_contractions_in(dtype, model.apply, variables, x, ops=("convolution", "dot_general"))
    out = jax.jit(irse50.IRSE50(dtype=jnp.bfloat16).apply)(variables, x)
    assert out.embedding_BxE.dtype == jnp.float32
    cos = jnp.sum(out.embedding_BxE * cases["feat"][:2], axis=-1)
    assert np.all(np.asarray(cos) > 0.999), cos  # measured 0.99993

"""The vectorised MAGEC loss equals a naive per-edit loop, and its gradient matches finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from magec_jax.inversion.magec_loss import binarize, edit_set, magec_loss
from magec_jax.models.linknet import LinkNet, LinkNetConfig, linknet_apply

L, D, K = 4, 8, 5


def _setup(seed: int = 0, dtype=jnp.float32):
    kw, kl, kn, kt = jax.random.split(jax.random.key(seed), 4)
    cfg = LinkNetConfig(num_ws=L, w_dim=D, num_outputs=K)
    variables = LinkNet(cfg).init(kl, jnp.zeros((L, D)))
    variables = jax.tree.map(lambda a: a.astype(dtype), variables)
    w = jax.random.normal(kw, (L, D), dtype)
    n = jax.random.normal(kn, (K, D), dtype)
    n = n / jnp.linalg.norm(n, axis=-1, keepdims=True)
    targets = binarize(jax.random.normal(kt, (K,)), "bce")
    return variables, w, n, targets


def _naive_bce(variables, w, n, targets, alpha, mode):
    """The paper's sum written the slow, obvious way: one LinkNet call per edit."""

    def lf(latent, target):
        logits = linknet_apply(variables, latent)
        return optax.sigmoid_binary_cross_entropy(logits, target).mean()

    edits = []
    for i in range(K):
        if mode == "flip":
            s = 1.0 if targets[i] == 0 else -1.0
            edits.append((s, i, 1.0 - targets[i]))
        else:
            edits.append((1.0, i, 1.0))
            edits.append((-1.0, i, 0.0))
    total = 0.0
    for s, i, bit in edits:
        edited = w + alpha * s * n[i][None, :]
        target = targets.at[i].set(bit)
        total += lf(edited, target)
    return lf(w, targets) + total / len(edits)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["flip", "add_remove"])
def test_vectorised_equals_naive_loop(mode):
    variables, w, n, targets = _setup()
    fast = magec_loss(w, variables, targets, n, alpha=3.0, mode=mode)
    slow = _naive_bce(variables, w, n, targets, 3.0, mode)
    np.testing.assert_allclose(fast, slow, rtol=1e-6)


def test_per_layer_directions_equal_broadcast_ones():
    variables, w, n, targets = _setup(1)
    layered = jnp.broadcast_to(n[:, None, :], (K, L, D))
    a = magec_loss(w, variables, targets, n, alpha=2.0)
    b = magec_loss(w, variables, targets, layered, alpha=2.0)
    np.testing.assert_allclose(a, b, rtol=1e-7)


def test_flip_targets_and_signs():
    targets = jnp.array([0.0, 1.0, 1.0])
    n = jnp.eye(3)[:, None, :]  # [K=3, L=1, D=3]
    offsets, edit_targets = edit_set(targets, n, alpha=2.0, mode="flip")
    np.testing.assert_array_equal(edit_targets, [[1, 1, 1], [0, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(offsets[:, 0, :], [[2, 0, 0], [0, -2, 0], [0, 0, -2]])


def test_softmax_flip_moves_towards_every_class():
    targets = binarize(jnp.array([0.1, 2.0, -1.0]), "softmax_ce")
    np.testing.assert_array_equal(targets, [0, 1, 0])
    offsets, edit_targets = edit_set(targets, jnp.eye(3)[:, None, :], alpha=1.0, loss_kind="softmax_ce")
    np.testing.assert_array_equal(edit_targets, np.eye(3))
    with pytest.raises(ValueError, match="softmax"):
        edit_set(targets, jnp.eye(3)[:, None, :], alpha=1.0, mode="add_remove", loss_kind="softmax_ce")


@pytest.mark.slow
@pytest.mark.parametrize("mode,loss_kind", [("flip", "bce"), ("add_remove", "bce"), ("flip", "softmax_ce")])
def test_gradient_matches_finite_differences(mode, loss_kind):
    with jax.enable_x64(True):
        variables, w, n, _ = _setup(2, jnp.float64)
        targets = binarize(jax.random.normal(jax.random.key(7), (K,)), loss_kind)

        def f(latent):
            return magec_loss(latent, variables, targets, n, alpha=1.5, mode=mode, loss_kind=loss_kind)

        grad = jax.grad(f)(w)
        rng = np.random.default_rng(0)
        eps = 1e-6
        for _ in range(6):
            v = jnp.asarray(rng.standard_normal((L, D)))
            fd = (f(w + eps * v) - f(w - eps * v)) / (2 * eps)
            np.testing.assert_allclose(jnp.vdot(grad, v), fd, rtol=1e-6, atol=1e-9)


def test_batched_under_vmap_equals_per_image():
    variables, w, n, targets = _setup(3)
    ws = jnp.stack([w, w * 0.5, -w])
    ts = jnp.stack([targets, 1 - targets, targets])
    batched = jax.vmap(lambda a, t: magec_loss(a, variables, t, n))(ws, ts)
    single = jnp.stack([magec_loss(a, variables, t, n) for a, t in zip(ws, ts, strict=True)])
    np.testing.assert_allclose(batched, single, rtol=1e-6)

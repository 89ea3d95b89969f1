"""Small stand-in networks for testing the inversion engine's mechanics quickly.

The engine is generic over its networks; these are tiny smooth functions with the same signatures as the
real generator, LPIPS, identity network and descriptor (the real ones are tested in the end-to-end tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from magec_jax.inversion.engine import Networks
from magec_jax.models.interfaces import Descriptor, IdentityEmbedder
from magec_jax.models.linknet import LinkNet, LinkNetConfig

NUM_WS, W_DIM, RES, K = 4, 6, 8, 3

# How far one image's latent may end from itself when the batch around it changes (its size, padding rows, the
# devices or processes it is sharded over): only the float32 summation order of the batched kernels changes, so
# its gradient differs by a relative delta of a few ulps (sums of at most RES * RES * 3 = 192 terms:
# sqrt(192) * 6e-8, about 1e-6). Adam's update lr * m / sqrt(v) does not depend on the gradient's scale, so each
# step moves a coordinate by at most lr * delta more: the tests' runs (at most 12 steps at lr <= 0.07) end within
# 12 * 0.07 * 1e-6, about 1e-6, of each other. Bounded at 1e-5 for a tenfold margin; a mixed-up image or a shared
# optimiser state is off by 1e-2 or more.
BATCH_ATOL = 1e-5


def _synthesize(variables, ws_BxLxD, noise):
    x = jnp.einsum("bld,ldp->bp", ws_BxLxD, variables["proj"])
    img = jnp.tanh(x).reshape(-1, RES, RES, 3)
    if noise is not None:
        img = img + 0.1 * noise[0][..., None]
    return img


def _lpips(variables, x, y):
    pool = lambda a: a.reshape(a.shape[0], RES // 2, 2, RES // 2, 2, 3).mean((2, 4))  # noqa: E731
    return jnp.abs(pool(x) - pool(y)).mean((1, 2, 3)) * variables["scale"]


def _embed(variables, images):
    e = images.reshape(images.shape[0], -1) @ variables["w"]
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True)


def _describe(variables, images):
    return images.reshape(images.shape[0], -1) @ variables["w"]


def networks(seed: int = 0) -> Networks:
    """Stand-in networks with every role filled (MAGEC and ID included)."""
    k = jax.random.split(jax.random.key(seed), 6)
    npix = RES * RES * 3
    directions = jax.random.normal(k[3], (K, W_DIM))
    linknet = LinkNet(LinkNetConfig(NUM_WS, W_DIM, K)).init(k[4], jnp.zeros((NUM_WS, W_DIM)))
    return Networks(
        synthesize=_synthesize,
        generator={"proj": 0.3 * jax.random.normal(k[0], (NUM_WS, W_DIM, npix))},
        num_ws=NUM_WS,
        w_dim=W_DIM,
        resolution=RES,
        w_avg=0.1 * jax.random.normal(k[5], (W_DIM,)),
        lpips=_lpips,
        lpips_variables={"scale": jnp.float32(1.0)},
        noise_init=(jnp.zeros((RES, RES)),),
        identity=IdentityEmbedder("standin", _embed, {"w": jax.random.normal(k[1], (npix, 16))}),
        descriptor=Descriptor("standin", ("a", "b", "c"), "bce", _describe, {"w": jax.random.normal(k[2], (npix, K))}),
        linknet=linknet,
        directions=directions / jnp.linalg.norm(directions, axis=-1, keepdims=True),
    )


def targets(n: int, seed: int = 1) -> np.ndarray:
    """Images the stand-in generator can (nearly) reach, ``[n, RES, RES, 3]`` float32."""
    nets = networks()
    ws = np.random.default_rng(seed).standard_normal((n, NUM_WS, W_DIM)).astype(np.float32)
    return np.asarray(_synthesize(nets.generator, jnp.asarray(ws), None))

"""StyleGAN2 training steps: losses, lazy regularisation, EMA, as pure functions compiled once each.

Follows NVIDIA stylegan2-ada-pytorch (``training/loss.py`` ``StyleGAN2Loss`` and ``training/training_loop.py``)
without augmentation (ADA) or conditioning. One training iteration runs these phases, each a jitted pure
function ``phase(state, ...) -> (state, metrics)`` that donates the state:

* ``g_main``: non-saturating loss ``softplus(-D(G(z)))`` on fresh z, Adam step of G.
* ``g_reg`` (every ``g_reg_interval`` iterations, when ``pl_weight > 0``): path-length regularisation on
  ``batch // pl_batch_shrink`` samples, ``pl_weight * (|J^T y| - a)^2`` with ``y ~ N(0, I) / sqrt(H W)`` and
  ``a`` the running mean of the lengths (``pl_decay``), the loss scaled by the interval; Adam step of G.
* ``d_main``: logistic loss ``softplus(D(G(z))) + softplus(-D(x))``, Adam step of D.
* ``d_reg`` (every ``d_reg_interval`` iterations, when ``r1_gamma > 0``): R1 ``gamma / 2 * |grad_x D(x)|^2``
  on the real batch, scaled by the interval; Adam step of D.
* ``end_iteration``: G_ema <- lerp(G, G_ema, beta) with ``beta = 0.5 ** (batch / (ema_kimg * 1000))``
  (optionally ramped up: ``ema_kimg * 1000 <= images_seen * ema_rampup``), ``step += 1``, ``images_seen += batch``.

Lazy regularisation shares each network's Adam state between its main and its regularisation phase, with
NVIDIA's correction ``mb = interval / (interval + 1)``: learning rate ``lr * mb``, betas ``beta ** mb``.
Every call of the mapping network (in ``g_main``, ``g_reg``, ``d_main``) moves the ``w_avg`` buffer towards
the batch mean of w with ``w_avg_beta``, as NVIDIA's training-mode mapping does. Style mixing: with
probability ``style_mixing_prob`` the W+ rows from a random cutoff in ``[1, num_ws)`` onwards come from a
second z. Training noise is random (``noise_mode='random'``); G_ema copies G's buffers.

Randomness: the state holds the raw data of one root key; each phase folds in its stream id (:data:`STREAMS`)
and the iteration number, then splits named sub-keys, so a resumed run draws exactly the numbers an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from magec_jax.models.discriminator import Discriminator, DiscriminatorConfig
from magec_jax.models.stylegan2 import Generator, StyleGAN2Config

STREAMS = ("init", "g_main", "g_reg", "d_main", "d_reg")
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class GANSetup:
    """Everything the compiled steps depend on besides the state (hashable: equal setups share compilations).

    Attributes:
      g: generator architecture.
      d: discriminator architecture.
      batch_size: images per phase (``g_reg`` uses ``batch_size // pl_batch_shrink``).
      g_lr, d_lr: Adam learning rates (before the lazy-regularisation correction).
      betas: Adam betas (before the correction).
      eps: Adam epsilon.
      r1_gamma: R1 weight (0: no ``d_reg``).
      d_reg_interval: iterations between ``d_reg`` phases.
      pl_weight: path-length weight (0: no ``g_reg``).
      pl_decay: rate of the path-length running mean.
      pl_batch_shrink: ``g_reg`` batch divisor.
      g_reg_interval: iterations between ``g_reg`` phases.
      style_mixing_prob: probability of mixing two z per batch.
      w_avg_beta: decay of the ``w_avg`` buffer.
      ema_kimg: G_ema half-life in thousands of images.
      ema_rampup: if set, the half-life is at most ``images_seen * ema_rampup`` images.
      xflip: mirror each real image with probability 1/2.
    """

    g: StyleGAN2Config
    d: DiscriminatorConfig
    batch_size: int
    g_lr: float = 0.0025
    d_lr: float = 0.0025
    betas: tuple[float, float] = (0.0, 0.99)
    eps: float = 1e-8
    r1_gamma: float = 1.0
    d_reg_interval: int = 16
    pl_weight: float = 2.0
    pl_decay: float = 0.01
    pl_batch_shrink: int = 2
    g_reg_interval: int = 4
    style_mixing_prob: float = 0.9
    w_avg_beta: float = 0.995
    ema_kimg: float = 10.0
    ema_rampup: float | None = None
    xflip: bool = True

    def __post_init__(self):
        if self.g.img_resolution != self.d.img_resolution or self.g.img_channels != self.d.img_channels:
            raise ValueError(f"G makes {self.g.img_resolution}px x{self.g.img_channels}, "
                             f"D takes {self.d.img_resolution}px x{self.d.img_channels}")
        if self.g.c_dim:
            raise ValueError("conditional generators are not supported by the GAN trainer")
        for size, what in ((self.batch_size, "batch"), (self.pl_batch_size, "path-length batch")):
            group = self.d.mbstd_group_size or size
            if size % min(group, size):
                raise ValueError(f"{what} size {size} is not a multiple of the minibatch-stddev group {group}")

    @property
    def do_g_reg(self) -> bool:
        return self.pl_weight > 0 and self.g_reg_interval > 0

    @property
    def do_d_reg(self) -> bool:
        return self.r1_gamma > 0 and self.d_reg_interval > 0

    @property
    def pl_batch_size(self) -> int:
        return max(1, self.batch_size // self.pl_batch_shrink)


class GANState(NamedTuple):
    """The whole training state (a pytree of arrays; the checkpoint holds exactly this).

    Attributes:
      step: iterations done (int32 scalar).
      images_seen: real images shown to D so far (int32 scalar).
      rng: raw data of the root PRNG key (``jax.random.key_data``), uint32.
      g_params: G's ``params`` collection.
      g_buffers: G's ``buffers`` (``w_avg``, ``noise_const``), shared by G_ema.
      g_ema_params: the moving average of ``g_params``.
      d_params: D's ``params``.
      g_opt_state, d_opt_state: Adam states (each shared by the main and the regularisation phase).
      pl_mean: running mean of the path lengths (float32 scalar).
    """

    step: jax.Array
    images_seen: jax.Array
    rng: jax.Array
    g_params: Any
    g_buffers: Any
    g_ema_params: Any
    d_params: Any
    g_opt_state: Any
    d_opt_state: Any
    pl_mean: jax.Array

    def g_ema_variables(self) -> dict:
        """G_ema as Flax variables for :class:`Generator`."""
        return {"params": self.g_ema_params, "buffers": self.g_buffers}


def lazy_adam(lr: float, betas: tuple[float, float], eps: float, reg_interval: int | None) -> optax.GradientTransformation:
    """Adam with NVIDIA's lazy-regularisation correction (``reg_interval`` None or 0: no correction)."""
    mb = reg_interval / (reg_interval + 1) if reg_interval else 1.0
    return optax.adam(lr * mb, b1=betas[0] ** mb, b2=betas[1] ** mb, eps=eps)


def g_optimizer(setup: GANSetup) -> optax.GradientTransformation:
    return lazy_adam(setup.g_lr, setup.betas, setup.eps, setup.g_reg_interval if setup.do_g_reg else None)


def d_optimizer(setup: GANSetup) -> optax.GradientTransformation:
    return lazy_adam(setup.d_lr, setup.betas, setup.eps, setup.d_reg_interval if setup.do_d_reg else None)


def init_state(setup: GANSetup, seed: int, *, fast_compile: bool = False) -> GANState:
    """A fresh state: NVIDIA initialisation of G and D from the ``init`` stream of ``jax.random.key(seed)``,
    G_ema = G."""
    options = FAST_COMPILE_OPTIONS if fast_compile else None
    return jax.jit(functools.partial(_init_state, setup), compiler_options=options)(jax.random.key(seed))


def abstract_state(setup: GANSetup) -> GANState:
    """Shapes and dtypes of :func:`init_state`'s result, without computing it (for restoring checkpoints)."""
    return jax.eval_shape(functools.partial(_init_state, setup), jax.random.key(0))


def _init_state(setup: GANSetup, root: jax.Array) -> GANState:
    key_g, key_d = jax.random.split(_stream(root, "init"))
    img = jnp.zeros((setup.batch_size, setup.d.img_resolution, setup.d.img_resolution, setup.d.img_channels))
    g_vars = Generator(setup.g).init({"params": key_g}, jnp.zeros((1, setup.g.z_dim), jnp.float32))
    d_vars = Discriminator(setup.d).init(key_d, img)
    g_params, d_params = g_vars["params"], d_vars["params"]
    return GANState(
        step=jnp.zeros((), jnp.int32),
        images_seen=jnp.zeros((), jnp.int32),
        rng=jax.random.key_data(root),
        g_params=g_params,
        g_buffers=g_vars["buffers"],
        g_ema_params=g_params,
        d_params=d_params,
        g_opt_state=g_optimizer(setup).init(g_params),
        d_opt_state=d_optimizer(setup).init(d_params),
        pl_mean=jnp.zeros((), jnp.float32),
    )


def _stream(root: jax.Array, name: str) -> jax.Array:
    return jax.random.fold_in(root, STREAMS.index(name))


def _phase_keys(state: GANState, phase: str, *names: str) -> dict[str, jax.Array]:
    """Named sub-keys of ``phase`` for this iteration: ``fold_in(fold_in(root, stream), step)``, split."""
    key = jax.random.fold_in(_stream(jax.random.wrap_key_data(state.rng), phase), state.step)
    return dict(zip(names, jax.random.split(key, len(names))))


# ----------------------------------------------------------------------------------------------------------
# Building blocks.


def mix_styles(ws_BxLxD: jax.Array, ws2_BxLxD: jax.Array, prob: float, key: jax.Array) -> jax.Array:
    """NVIDIA style mixing: with probability ``prob`` rows ``>= cutoff`` (``cutoff ~ U{1, ..., L-1}``, one per
    batch) are taken from ``ws2``; otherwise ``ws`` unchanged."""
    num_ws = ws_BxLxD.shape[1]
    key_cut, key_coin = jax.random.split(key)
    cutoff = jax.random.randint(key_cut, (), 1, num_ws)
    cutoff = jnp.where(jax.random.uniform(key_coin, ()) < prob, cutoff, num_ws)
    rows_1xLx1 = jnp.arange(num_ws).reshape(1, num_ws, 1)
    return jnp.where(rows_1xLx1 >= cutoff, ws2_BxLxD, ws_BxLxD)


def map_latents(
    setup: GANSetup, g_params, g_buffers, batch: int, keys: dict[str, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """Fresh z through the mapping network, style-mixed: ``(ws [B, num_ws, w_dim], new w_avg [w_dim])``."""
    variables = {"params": g_params, "buffers": g_buffers}
    generator = Generator(setup.g)
    z_BxZ = jax.random.normal(keys["z"], (batch, setup.g.z_dim), jnp.float32)
    ws_BxLxD = generator.apply(variables, z_BxZ, method="mapping")
    w_avg_D = g_buffers["mapping"]["w_avg"]
    batch_mean_D = jax.lax.stop_gradient(jnp.mean(ws_BxLxD[:, 0], axis=0))
    new_w_avg_D = batch_mean_D + setup.w_avg_beta * (w_avg_D - batch_mean_D)
    if setup.style_mixing_prob > 0:
        z2_BxZ = jax.random.normal(keys["z_mix"], (batch, setup.g.z_dim), jnp.float32)
        ws2_BxLxD = generator.apply(variables, z2_BxZ, method="mapping")
        ws_BxLxD = mix_styles(ws_BxLxD, ws2_BxLxD, setup.style_mixing_prob, keys["mix"])
    return ws_BxLxD, new_w_avg_D


def synthesize(setup: GANSetup, g_params, g_buffers, ws_BxLxD: jax.Array, noise_key: jax.Array) -> jax.Array:
    """Training-mode synthesis (random noise): images ``[B, R, R, C]``."""
    variables = {"params": g_params, "buffers": g_buffers}
    return Generator(setup.g).apply(variables, ws_BxLxD, method="synthesis", noise_mode="random", key=noise_key)


def with_w_avg(g_buffers: dict, w_avg_D: jax.Array) -> dict:
    """``g_buffers`` with ``mapping/w_avg`` replaced."""
    return {**g_buffers, "mapping": {**g_buffers["mapping"], "w_avg": w_avg_D}}


def discriminate(setup: GANSetup, d_params, img_BxHxWxC: jax.Array) -> jax.Array:
    """D logits ``[B]``."""
    return Discriminator(setup.d).apply({"params": d_params}, img_BxHxWxC)


def real_images(setup: GANSetup, reals_BxHxWxC: jax.Array, flip_key: jax.Array) -> jax.Array:
    """uint8 reals -> float32 [-1, 1] (``x / 127.5 - 1``), each mirrored with probability 1/2 when ``xflip``."""
    x = reals_BxHxWxC.astype(jnp.float32) / 127.5 - 1.0
    if not setup.xflip:
        return x
    flip_Bx1x1x1 = jax.random.bernoulli(flip_key, 0.5, (x.shape[0], 1, 1, 1))
    return jnp.where(flip_Bx1x1x1, x[:, :, ::-1], x)


def input_gradient_loss(
    f: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    x_of: Callable[[Any], jax.Array],
    loss_of_grad: Callable[[jax.Array], tuple[jax.Array, Any]],
) -> tuple[tuple[jax.Array, Any], Any]:
    """Value and parameter gradient of a loss on an input gradient: ``L(p) = loss_of_grad(grad_x f(p, x_of(p)))``.

    Computed reverse-over-forward instead of as a gradient of a gradient: with ``c = dL/d(grad_x f)`` held
    fixed, ``dL/dp = d/dp <c, grad_x f(p, x_of(p))>``, and ``<c, grad_x f>`` is the directional derivative
    of ``f`` along ``c`` (a ``jax.jvp``). Equal up to rounding, and 3-4x faster on XLA:CPU for StyleGAN2's R1
    and path-length terms, whose grad-of-grad programs are dominated by slow second-order convolution
    gradients.

    Args:
      f: ``(params, x) -> scalar``.
      params: the pytree to differentiate.
      x_of: ``params -> x`` (the point where ``f`` is differentiated; may depend on ``params``).
      loss_of_grad: ``grad_x -> (loss, aux)``.

    Returns:
      ``((loss, aux), grads)``.
    """
    grad_x = jax.grad(f, argnums=1)(params, x_of(params))
    (loss, aux), c = jax.value_and_grad(loss_of_grad, has_aux=True)(grad_x)
    directional = lambda p: jax.jvp(lambda x: f(p, x), (x_of(p),), (c,))[1]
    return (loss, aux), jax.grad(directional)(params)


def r1_loss(setup: GANSetup, d_params, reals_BxHxWxC: jax.Array) -> tuple[tuple[jax.Array, jax.Array], Any]:
    """R1 loss ``gamma / 2 * mean_B |grad_x sum D(x)|^2 * d_reg_interval`` and its D gradient.

    Returns ``((loss, penalty_B), grads)``; ``penalty_B`` is ``|grad_x|^2`` per image (the gradient of the
    summed logits, as NVIDIA: the minibatch-stddev layer couples the images of a group).
    """
    f = lambda params, x: jnp.sum(discriminate(setup, params, x))

    def loss_of_grad(grads_BxHxWxC):
        penalty_B = jnp.sum(jnp.square(grads_BxHxWxC), axis=(1, 2, 3))
        return jnp.mean(penalty_B) * (setup.r1_gamma / 2) * setup.d_reg_interval, penalty_B

    return input_gradient_loss(f, d_params, lambda _: reals_BxHxWxC, loss_of_grad)


def pl_loss(
    setup: GANSetup, g_params, g_buffers, pl_mean: jax.Array, keys: dict[str, jax.Array]
) -> tuple[tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]], Any]:
    """Path-length loss ``pl_weight * mean_B (|J_w^T y| - a)^2 * g_reg_interval`` and its G gradient.

    ``|J_w^T y|`` is NVIDIA's ``pl_lengths``: ``sqrt(mean_rows(sum_dim(g^2)))`` with ``g`` the gradient wrt
    the (style-mixed) W+ of ``sum(G(w) * y)``, ``y ~ N(0, I) / sqrt(H W)``; ``a`` is the running mean updated
    with this batch (gradient included, as NVIDIA). Returns ``((loss, (new_pl_mean, penalty, new_w_avg)),
    grads)``.
    """
    batch, res = setup.pl_batch_size, setup.g.img_resolution
    y = jax.random.normal(keys["pl_noise"], (batch, res, res, setup.g.img_channels), jnp.float32) / res
    ws_of = lambda params: map_latents(setup, params, g_buffers, batch, keys)[0]
    f = lambda params, ws: jnp.sum(synthesize(setup, params, g_buffers, ws, keys["noise"]) * y)

    def loss_of_grad(grads_BxLxD):
        lengths_B = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads_BxLxD), axis=2), axis=1))
        new_mean = pl_mean + (jnp.mean(lengths_B) - pl_mean) * setup.pl_decay
        penalty = jnp.mean(jnp.square(lengths_B - new_mean))
        return penalty * setup.pl_weight * setup.g_reg_interval, (new_mean, penalty)

    (loss, (new_mean, penalty)), grads = input_gradient_loss(f, g_params, ws_of, loss_of_grad)
    new_w_avg = map_latents(setup, g_params, g_buffers, batch, keys)[1]
    return (loss, (new_mean, penalty, new_w_avg)), grads


def ema_beta(setup: GANSetup, images_seen: jax.Array) -> jax.Array:
    """``0.5 ** (batch / ema_nimg)``, ``ema_nimg = ema_kimg * 1000`` (capped by ``images_seen * ema_rampup``)."""
    ema_nimg = jnp.asarray(setup.ema_kimg * 1000.0, jnp.float32)
    if setup.ema_rampup is not None:
        ema_nimg = jnp.minimum(ema_nimg, images_seen.astype(jnp.float32) * setup.ema_rampup)
    return jnp.power(0.5, setup.batch_size / jnp.maximum(ema_nimg, 1e-8))


# ----------------------------------------------------------------------------------------------------------
# The phases (compiled once per setup; the state is donated).


def g_main(state: GANState, *, setup: GANSetup) -> tuple[GANState, Metrics]:
    """Non-saturating generator step."""
    keys = _phase_keys(state, "g_main", "z", "z_mix", "mix", "noise")

    def loss_fn(g_params):
        ws, new_w_avg = map_latents(setup, g_params, state.g_buffers, setup.batch_size, keys)
        fakes = synthesize(setup, g_params, state.g_buffers, ws, keys["noise"])
        logits_B = discriminate(setup, state.d_params, fakes)
        return jnp.mean(jax.nn.softplus(-logits_B)), (new_w_avg, logits_B)

    (loss, (new_w_avg, logits_B)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
    updates, g_opt_state = g_optimizer(setup).update(grads, state.g_opt_state, state.g_params)
    state = state._replace(
        g_params=optax.apply_updates(state.g_params, updates),
        g_opt_state=g_opt_state,
        g_buffers=with_w_avg(state.g_buffers, new_w_avg),
    )
    return state, {"loss_g": loss, "logits_fake_g": jnp.mean(logits_B)}


def g_reg(state: GANState, *, setup: GANSetup) -> tuple[GANState, Metrics]:
    """Lazy path-length regularisation step of G (loss scaled by ``g_reg_interval``)."""
    keys = _phase_keys(state, "g_reg", "z", "z_mix", "mix", "noise", "pl_noise")
    (_, (pl_mean, penalty, new_w_avg)), grads = pl_loss(setup, state.g_params, state.g_buffers, state.pl_mean, keys)
    updates, g_opt_state = g_optimizer(setup).update(grads, state.g_opt_state, state.g_params)
    state = state._replace(
        g_params=optax.apply_updates(state.g_params, updates),
        g_opt_state=g_opt_state,
        g_buffers=with_w_avg(state.g_buffers, new_w_avg),
        pl_mean=pl_mean,
    )
    return state, {"pl_penalty": penalty, "pl_mean": pl_mean}


def d_main(state: GANState, reals_BxHxWxC: jax.Array, *, setup: GANSetup) -> tuple[GANState, Metrics]:
    """Logistic discriminator step on fresh fakes and the real batch (uint8)."""
    keys = _phase_keys(state, "d_main", "z", "z_mix", "mix", "noise", "flip")
    ws, new_w_avg = map_latents(setup, state.g_params, state.g_buffers, setup.batch_size, keys)
    fakes = synthesize(setup, state.g_params, state.g_buffers, ws, keys["noise"])
    reals = real_images(setup, reals_BxHxWxC, keys["flip"])

    def loss_fn(d_params):
        logits_fake_B = discriminate(setup, d_params, fakes)
        logits_real_B = discriminate(setup, d_params, reals)
        loss_fake = jnp.mean(jax.nn.softplus(logits_fake_B))
        loss_real = jnp.mean(jax.nn.softplus(-logits_real_B))
        return loss_fake + loss_real, (loss_fake, loss_real, logits_fake_B, logits_real_B)

    (loss, (loss_fake, loss_real, logits_fake_B, logits_real_B)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.d_params
    )
    updates, d_opt_state = d_optimizer(setup).update(grads, state.d_opt_state, state.d_params)
    state = state._replace(
        d_params=optax.apply_updates(state.d_params, updates),
        d_opt_state=d_opt_state,
        g_buffers=with_w_avg(state.g_buffers, new_w_avg),
    )
    return state, {
        "loss_d": loss,
        "loss_d_fake": loss_fake,
        "loss_d_real": loss_real,
        "logits_fake": jnp.mean(logits_fake_B),
        "logits_real": jnp.mean(logits_real_B),
    }


def d_reg(state: GANState, reals_BxHxWxC: jax.Array, *, setup: GANSetup) -> tuple[GANState, Metrics]:
    """Lazy R1 step of D on the real batch (uint8), loss ``gamma / 2 * mean(penalty) * d_reg_interval``."""
    keys = _phase_keys(state, "d_reg", "flip")
    reals = real_images(setup, reals_BxHxWxC, keys["flip"])
    (_, penalty_B), grads = r1_loss(setup, state.d_params, reals)
    updates, d_opt_state = d_optimizer(setup).update(grads, state.d_opt_state, state.d_params)
    state = state._replace(d_params=optax.apply_updates(state.d_params, updates), d_opt_state=d_opt_state)
    return state, {"r1_penalty": jnp.mean(penalty_B)}


def end_iteration(state: GANState, *, setup: GANSetup) -> tuple[GANState, Metrics]:
    """G_ema update (half-life from the images seen before this iteration), ``step += 1``,
    ``images_seen += batch_size``."""
    beta = ema_beta(setup, state.images_seen)
    g_ema = jax.tree.map(lambda p, e: p + (e - p) * beta, state.g_params, state.g_ema_params)
    state = state._replace(
        g_ema_params=g_ema, step=state.step + 1, images_seen=state.images_seen + setup.batch_size
    )
    return state, {"ema_beta": beta}


class Phases(NamedTuple):
    """The compiled phases of one setup; each ``phase(state[, reals]) -> (state, metrics)`` donates the state."""

    g_main: Any
    g_reg: Any
    d_main: Any
    d_reg: Any
    end_iteration: Any
    sample: Any  # (G variables, z [B, z_dim], psi []) -> images [B, R, R, C], constant noise


FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@functools.lru_cache(maxsize=8)
def compile_phases(setup: GANSetup, fast_compile: bool = False) -> Phases:
    """jit of every phase for ``setup`` (the one place where the steps are transformed).

    ``fast_compile`` lowers XLA's backend optimisation (:data:`FAST_COMPILE_OPTIONS`): compiles about 2-3x
    faster and runs slower; for tests and smoke runs of tiny models.
    """
    options = FAST_COMPILE_OPTIONS if fast_compile else None

    def jit_phase(fn):
        return jax.jit(functools.partial(fn, setup=setup), donate_argnums=0, compiler_options=options)

    def sample_fn(variables, z_BxZ, psi):
        generator = Generator(setup.g)
        ws = generator.apply(variables, z_BxZ, method="mapping", truncation_psi=psi)
        return generator.apply(variables, ws, method="synthesis", noise_mode="const")

    return Phases(
        g_main=jit_phase(g_main),
        g_reg=jit_phase(g_reg),
        d_main=jit_phase(d_main),
        d_reg=jit_phase(d_reg),
        end_iteration=jit_phase(end_iteration),
        sample=jax.jit(sample_fn, compiler_options=options),
    )


def train_iteration(
    phases: Phases, state: GANState, reals_BxHxWxC: jax.Array, setup: GANSetup, step: int
) -> tuple[GANState, Metrics]:
    """One iteration (``step`` is the host's copy of ``state.step``, which picks the regularisation phases).

    Dispatches the compiled phases without waiting for them; returns the new state and the phases' metrics
    (device scalars).
    """
    metrics: Metrics = {}
    state, m = phases.g_main(state)
    metrics.update(m)
    if setup.do_g_reg and step % setup.g_reg_interval == 0:
        state, m = phases.g_reg(state)
        metrics.update(m)
    state, m = phases.d_main(state, reals_BxHxWxC)
    metrics.update(m)
    if setup.do_d_reg and step % setup.d_reg_interval == 0:
        state, m = phases.d_reg(state, reals_BxHxWxC)
        metrics.update(m)
    state, m = phases.end_iteration(state)
    metrics.update(m)
    return state, metrics


def num_params(tree: Any) -> int:
    """Number of scalars in a pytree."""
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))

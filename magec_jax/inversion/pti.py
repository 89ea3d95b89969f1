"""Pivotal Tuning Inversion (Roich et al. 2021), batched: every image of a batch tunes its own generator.

PTI keeps an inverted latent as a *pivot* and fine-tunes the generator so that ``G(pivot)`` reproduces the
photograph; a locality regulariser keeps the generator's outputs near the pivot unchanged. Here each image's
change of the generator is a weight delta (``magec_jax.models.deltas``: full, as PTI, or low-rank), its own
optax Adam state and its own early stop; the per-image step is vmapped over the batch, jitted once per batch
shape and sharded over the ``'data'`` mesh like the inversion engine, so an image tuned alone gets the same
generator as in any batch. Data flow of one batch::

    targets, pivots --prepare--> target LPIPS features and every term's constants
    state (delta, Adam state, converged/failed flags) --steps (lax.scan chunks)--> state
    state --finish--> tuned reconstructions, every loss term of them, the deltas

The official implementation's values (``danielroich/PTI``, ``configs/hyperparameters.py``) are the defaults
of :class:`PTISettings`; docs/pti.md lists them and every deviation (LPIPS-VGG16 instead of AlexNet, W+ pivots
from this project's inversion, per-image early stop in a batch).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from magec_jax.inversion.engine import jit_at_precision, local_rows, make_mesh
from magec_jax.inversion.networks import Networks
from magec_jax.inversion.settings import ComputeOptions, InversionSettings, Phase
from magec_jax.inversion.terms import TermInputs, bind_terms
from magec_jax.models import stylegan2
from magec_jax.models.deltas import DeltaSpec, apply_delta, init_delta

LOSS_COLUMNS = ("total", "mse", "lpips", "locality")


@dataclasses.dataclass(frozen=True)
class LocalitySettings:
    """PTI's locality regulariser: at every ``interval``-th step, ``samples`` latents ``w_r = pivot + alpha *
    (w - pivot) / |w - pivot|`` (w: mapped z ~ N(0, I) at truncation ``truncation_psi``; the norm over the whole
    W+ tensor) are rendered without noise by the tuned and by the original generator, and ``l2 * MSE + lpips *
    LPIPS`` between the two, averaged over the samples, joins the loss. The official default is off."""

    enabled: bool = False
    l2: float = 0.1
    lpips: float = 0.1
    alpha: float = 30.0
    samples: int = 1
    interval: int = 1
    truncation_psi: float = 0.5

    def __post_init__(self):
        if self.samples < 1 or self.interval < 1:
            raise ValueError(f"locality samples and interval must be positive, got {self.samples}, {self.interval}")


@dataclasses.dataclass(frozen=True)
class PTISettings:
    """Everything that decides a tuning (defaults: the official PTI's; docs/pti.md).

    Attributes:
      steps: at most this many Adam steps per image (``max_pti_steps``).
      lr: Adam's learning rate on the weights (``pti_learning_rate``); torch's Adam betas and eps.
      l2, lpips: weights of the MSE and LPIPS between ``G(pivot)`` and the target (``pt_l2_lambda``,
        ``pt_lpips_lambda``; images in [-1, 1]).
      lpips_threshold: an image stops (no further update) once its LPIPS, before a step, is at most this
        (``LPIPS_value_threshold``; AlexNet units there, VGG16 here: see docs/pti.md).
      locality: the locality regulariser.
      delta: what is tuned (full weights as PTI, or low-rank deltas).
      seed: draws the low-rank factors' start and the locality samples (the same for every image).
      chunk_steps: steps per ``lax.scan`` call between the host's progress reads.
      compute: how the step is computed (the inversion's options; ``"auto"`` per platform).
    """

    steps: int = 350
    lr: float = 3e-4
    l2: float = 1.0
    lpips: float = 1.0
    lpips_threshold: float = 0.06
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    locality: LocalitySettings = LocalitySettings()
    delta: DeltaSpec = DeltaSpec()
    seed: int = 0
    chunk_steps: int = 25
    compute: ComputeOptions = ComputeOptions()

    def __post_init__(self):
        if self.steps < 1 or self.chunk_steps < 1:
            raise ValueError(f"steps and chunk_steps must be positive integers, got {self.steps}, {self.chunk_steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")


@dataclasses.dataclass(frozen=True)
class PTIConfig(PTISettings):
    """``config.pti`` of an inversion job: the tuning stage after the inversion (``magec_jax.inversion.pti_job``).

    Attributes:
      enabled: run the stage (off by default).
      batch_size: images per tuning batch (0: the job's ``batch_size``).
      (the rest: :class:`PTISettings`, field for field)
    """

    enabled: bool = False
    batch_size: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.batch_size < 0:
            raise ValueError(f"pti.batch_size must be a non-negative integer (0: the job's), got {self.batch_size}")

    @property
    def settings(self) -> PTISettings:
        """The tuning settings of the block."""
        return PTISettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(PTISettings)})


class TuneTargets(NamedTuple):
    """Per-image constants of a batch (batch axis first)."""

    images: jax.Array  # [B, H, W, C] in [-1, 1]
    pivots: jax.Array  # [B, num_ws, w_dim]
    lpips: Any  # the targets' LPIPS features (or the images, when the networks do not split LPIPS)
    prepared: dict  # term name -> that term's constants, for the final report


class TuneState(NamedTuple):
    """Per-image tuning state (batch axis first on every leaf)."""

    delta: Any  # the weight delta (deltas.init_delta's structure)
    opt: Any  # Adam's state of the delta
    converged: jax.Array  # [B] bool: LPIPS reached the threshold; no update since
    failed: jax.Array  # [B] bool: a non-finite loss or gradient; frozen since
    steps: jax.Array  # [B] int32: updates taken
    losses: jax.Array  # [B, 4]: LOSS_COLUMNS at the last step evaluated before the image stopped


def locality_latents(cfg: stylegan2.StyleGAN2Config, variables: Any, settings: PTISettings) -> np.ndarray | None:
    """The locality regulariser's sampled latents, ``[steps, samples, num_ws, w_dim]`` (None when it is off):
    ``mapping(z)`` at the settings' truncation for z ~ N(0, I) from ``settings.seed``, one draw per step,
    shared by every image so that a batch does not change an image's tuning."""
    loc = settings.locality
    if not loc.enabled:
        return None
    model = stylegan2.Generator(cfg)
    key = jax.random.fold_in(jax.random.key(settings.seed), 1)
    z = jax.random.normal(key, (settings.steps * loc.samples, cfg.z_dim), jnp.float32)
    c = None if not cfg.c_dim else jnp.zeros((z.shape[0], cfg.c_dim), jnp.float32).at[:, 0].set(1.0)
    ws = jax.jit(functools.partial(model.apply, method="mapping", truncation_psi=loc.truncation_psi))(variables, z, c)
    return np.asarray(ws, np.float32).reshape(settings.steps, loc.samples, cfg.num_ws, cfg.w_dim)


class Tuner:
    """Compiled pivotal tuning of batches for one set of networks and settings.

    Args:
      nets: the frozen networks (the inversion's; their generator is tuned, their LPIPS scores).
      settings: the tuning settings.
      mesh: device mesh with a ``'data'`` axis (default: all devices).
      locality_ws: :func:`locality_latents` (required when the locality regulariser is on).

    Attributes:
      term_names: the loss terms reported for each tuned reconstruction (the inversion's terms, G(pivot) now
        rendered by the tuned generator).
    """

    def __init__(self, nets: Networks, settings: PTISettings, mesh: Mesh | None = None, *,
                 locality_ws: np.ndarray | None = None):
        self.settings = settings
        self.compute = settings.compute.resolved()
        self.nets = nets = nets.for_compute(self.compute.networks)
        self.mesh = mesh if mesh is not None else make_mesh()
        if nets.lpips_target is None or nets.lpips_to_target is None:
            raise ValueError("pivotal tuning needs networks whose LPIPS is split into lpips_target and "
                             "lpips_to_target (magec_jax.bundle.stylegan2_networks builds them so)")
        loc = settings.locality
        if loc.enabled:
            expected = (settings.steps, loc.samples, nets.num_ws, nets.w_dim)
            if locality_ws is None or np.shape(locality_ws) != expected:
                raise ValueError(f"the locality regulariser needs locality_ws of shape {expected} "
                                 "(magec_jax.inversion.pti.locality_latents)")
        report = InversionSettings(phases=(Phase(1, mse=1.0),))
        self.terms = bind_terms(nets, report)
        self.term_names = tuple(self.terms)
        self._optimizer = optax.adam(settings.lr, b1=settings.adam_b1, b2=settings.adam_b2, eps=settings.adam_eps)
        base = {k: v for k, v in nets.generator.items() if k != stylegan2.FROZEN}
        zero_noise = tuple(jnp.zeros((loc.samples, *n.shape), jnp.float32) for n in nets.noise_init)
        arrays = dict(generator=base, frozen=nets.generator, lpips=nets.lpips_variables, zero_noise=zero_noise,
                      locality=None if not loc.enabled else jnp.asarray(locality_ws, jnp.float32),
                      terms={name: term.variables for name, term in self.terms.items()})
        self.data_sharding = NamedSharding(self.mesh, P("data"))
        self.replicated = NamedSharding(self.mesh, P())
        self._arrays = jax.device_put(arrays, self.replicated)
        jit = functools.partial(jit_at_precision, self.compute.matmul_precision, out_shardings=self.data_sharding)
        donate = (1,) if self.compute.donate == "on" else ()
        self._prepare = jit(self._prepare_impl)
        self._init = jit(self._init_impl, static_argnums=(1,))
        self._run = jit(self._step_impl, donate_argnums=donate)
        self._run_chunk = jit(self._chunk_impl, donate_argnums=donate)
        self._finish = jit(self._finish_impl)

    # ---- pure per-image pieces --------------------------------------------------------------------------------

    def _render(self, generator, ws_NxLxD: jax.Array, noise=None) -> jax.Array:
        return self.nets.synthesize(generator, ws_NxLxD, noise)

    def _loss(self, arrays, delta, pivot_LxD, target_image, target_lpips, step):
        s, loc = self.settings, self.settings.locality
        generator = apply_delta(arrays["generator"], delta)
        image = self._render(generator, pivot_LxD[None])[0]
        mse = jnp.mean(jnp.square(image - target_image))
        features = jax.tree.map(lambda f: f[None], target_lpips)
        lp = self.nets.lpips_to_target(arrays["lpips"], image[None], features)[0]
        total = s.l2 * mse + s.lpips * lp
        locality = jnp.zeros((), jnp.float32)
        if loc.enabled:
            ws_NxLxD = arrays["locality"][jnp.minimum(step, arrays["locality"].shape[0] - 1)]
            away = ws_NxLxD - pivot_LxD[None]
            norm = jnp.sqrt(jnp.sum(jnp.square(away), axis=(1, 2), keepdims=True))
            moved = pivot_LxD[None] + loc.alpha * away / jnp.maximum(norm, 1e-12)
            new = self._render(generator, moved, arrays["zero_noise"])
            old = jax.lax.stop_gradient(self._render(arrays["frozen"], moved, arrays["zero_noise"]))
            locality = (loc.l2 * jnp.mean(jnp.square(old - new))
                        + loc.lpips * jnp.mean(self.nets.lpips(arrays["lpips"], old, new)))
            total = total + jnp.where(step % loc.interval == 0, locality, 0.0)
        return total, jnp.stack([total, mse, lp, locality])

    def _step(self, arrays, st: TuneState, target: TuneTargets, step) -> TuneState:
        """One Adam step of one image (no batch axis), unless it has stopped."""
        grad_fn = jax.value_and_grad(self._loss, argnums=1, has_aux=True)
        (loss, columns), grad = grad_fn(arrays, st.delta, target.pivots, target.images, target.lpips, step)
        stopped = st.converged | st.failed
        converged = st.converged | (~st.failed & (columns[2] <= self.settings.lpips_threshold))
        finite = jnp.isfinite(loss) & jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grad)]))
        failed = st.failed | (~converged & ~finite)
        move = ~converged & ~failed
        updates, opt = self._optimizer.update(grad, st.opt, st.delta)
        keep = lambda new, old: jnp.where(move, new, old)  # noqa: E731
        delta = jax.tree.map(keep, optax.apply_updates(st.delta, updates), st.delta)
        opt = jax.tree.map(keep, opt, st.opt)
        losses = jnp.where(stopped, st.losses, columns)
        return TuneState(delta, opt, converged, failed, st.steps + move.astype(jnp.int32), losses)

    # ---- batched, jitted entry points -----------------------------------------------------------------------

    def _prepare_impl(self, arrays, images_BxHxWxC, pivots_BxLxD) -> TuneTargets:
        images = images_BxHxWxC.astype(jnp.float32)
        lpips = self.nets.lpips_target(arrays["lpips"], images)
        prepared = {name: term.prepare(arrays["terms"][name], images)
                    for name, term in self.terms.items() if term.prepare is not None}
        return TuneTargets(images, pivots_BxLxD.astype(jnp.float32), lpips, prepared)

    def _init_impl(self, arrays, batch: int) -> TuneState:
        key = jax.random.fold_in(jax.random.key(self.settings.seed), 0)
        delta = init_delta(arrays["generator"], self.settings.delta, key)  # the same start for every image
        delta = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (batch, *leaf.shape)), delta)
        opt = jax.vmap(self._optimizer.init)(delta)
        flags = jnp.zeros((batch,), bool)
        return TuneState(delta, opt, flags, flags, jnp.zeros((batch,), jnp.int32),
                         jnp.zeros((batch, len(LOSS_COLUMNS)), jnp.float32))

    def _step_impl(self, arrays, state: TuneState, targets: TuneTargets, step) -> TuneState:
        return jax.vmap(self._step, in_axes=(None, 0, 0, None))(arrays, state, targets, step)

    def _chunk_impl(self, arrays, state: TuneState, targets: TuneTargets, steps) -> TuneState:
        body = lambda st, step: (self._step_impl(arrays, st, targets, step), None)  # noqa: E731
        return jax.lax.scan(body, state, steps)[0]

    def _finish_impl(self, arrays, state: TuneState, targets: TuneTargets):
        def one(delta, target):
            image = self._render(apply_delta(arrays["generator"], delta), target.pivots[None])[0]
            values = [jnp.asarray(term.loss(arrays["terms"][name], TermInputs(
                image, target.pivots, target.images, target.prepared.get(name))), jnp.float32)
                for name, term in self.terms.items()]
            return image, jnp.stack(values)

        return jax.vmap(one)(state.delta, targets)

    # ---- host-side driver -----------------------------------------------------------------------------------

    def prepare(self, images_BxHxWxC, pivots_BxLxD) -> TuneTargets:
        """The per-image constants of a batch (sharded over ``'data'``)."""
        put = lambda a: a if isinstance(a, jax.Array) and a.sharding == self.data_sharding \
            else jax.device_put(np.asarray(a, np.float32), self.data_sharding)  # noqa: E731
        return self._prepare(self._arrays, put(images_BxHxWxC), put(pivots_BxLxD))

    def init(self, batch: int) -> TuneState:
        """The start of ``batch`` tunings: zero deltas, fresh Adam states."""
        return self._init(self._arrays, batch)

    def step(self, state: TuneState, targets: TuneTargets, step: int | np.ndarray) -> TuneState:
        """One step (an integer) or a ``lax.scan`` over a vector of step numbers; ``state`` is donated when
        ``compute.donate`` is on."""
        if np.ndim(step):
            return self._run_chunk(self._arrays, state, targets, np.asarray(step, np.int32))
        return self._run(self._arrays, state, targets, np.int32(step))

    def tune(self, images_BxHxWxC, pivots_BxLxD, *,
             on_chunk: Callable[[int, int, TuneState], None] | None = None) -> dict[str, Any]:
        """Tunes one batch (its size a multiple of the mesh size; images at G's resolution in [-1, 1]).

        The loop stops early once every image has converged or failed (one host read per chunk).

        Returns:
          dict of device arrays: ``images`` (tuned reconstructions), ``terms`` ``[B, T]`` (:attr:`term_names`),
          ``losses`` ``[B, 4]`` (:data:`LOSS_COLUMNS` at the last step evaluated), ``steps`` ``[B]`` (updates
          taken), ``converged`` and ``failed`` ``[B]``, ``delta`` (batch axis first).
        """
        targets = self.prepare(images_BxHxWxC, pivots_BxLxD)
        state = self.init(targets.images.shape[0])
        total, chunk = self.settings.steps, self.settings.chunk_steps
        for start in range(0, total, chunk):
            count = min(chunk, total - start)
            if self.compute.loop == "scan":
                state = self.step(state, targets, np.arange(start, start + count, dtype=np.int32))
            else:
                for step in range(start, start + count):
                    state = self.step(state, targets, step)
            if on_chunk is not None:
                on_chunk(start + count, total, state)
            if bool(np.all(local_rows(state.converged | state.failed))):
                break
        images, terms = self._finish(self._arrays, state, targets)
        return dict(images=images, terms=terms, losses=state.losses, steps=state.steps, converged=state.converged,
                    failed=state.failed, delta=state.delta)

    def compile_step(self, state: TuneState, targets: TuneTargets, step: int | np.ndarray) -> Callable[..., Any]:
        """The step (an integer) or a ``lax.scan`` chunk (a vector of step numbers) compiled ahead of time for
        these shapes, bound to the tuner's networks and called as ``fn(state, targets, step)``; the call's time
        is the compile time, and ``fn.func`` is JAX's executable (``memory_analysis()``)."""
        fn = self._run_chunk if np.ndim(step) else self._run
        step = np.asarray(step, np.int32)
        return functools.partial(fn.lower(self._arrays, state, targets, step).compile(), self._arrays)

    def compiled_variants(self) -> dict[str, int]:
        """How many times each jitted entry point compiled (one per batch shape)."""
        fns = dict(step=self._run, scan_chunk=self._run_chunk, prepare=self._prepare, finish=self._finish)
        return {name: fn._cache_size() for name, fn in fns.items()}


def tune_arrays(
    networks: Networks,
    images_NxHxWxC: np.ndarray,
    pivots_NxLxD: np.ndarray,
    settings: PTISettings | None = None,
    *,
    batch_size: int = 8,
    tuner: Tuner | None = None,
    generator: tuple[stylegan2.StyleGAN2Config, Any] | None = None,
) -> dict[str, Any]:
    """Pivotal tuning of images held in memory around their pivots (``invert_arrays``'s ``ws``).

    Args:
      networks: the frozen networks (``load_bundle(path).networks()``).
      images_NxHxWxC: targets at the generator's resolution, uint8 or float in [-1, 1].
      pivots_NxLxD: W+ pivots ``[N, num_ws, w_dim]`` (or ``[N, 1, num_ws, w_dim]`` as the job stores them).
      settings: the tuning (default: the official PTI's, :class:`PTISettings`).
      batch_size: images per compiled batch (the last batch padded).
      tuner: a tuner to reuse across calls (its networks and settings win).
      generator: ``(cfg, variables)`` of the generator, for the locality regulariser's samples.

    Returns:
      dict of numpy arrays: ``images`` (tuned reconstructions in [-1, 1]), ``terms`` (name -> ``[N]``),
      ``losses`` (LOSS_COLUMNS name -> ``[N]``), ``steps``, ``converged``, ``failed`` ``[N]``, and ``deltas``:
      one delta per image (``deltas.save_delta`` writes it; ``deltas.apply_delta`` applies it).
    """
    settings = settings or PTISettings()
    if tuner is None:
        ws = None
        if settings.locality.enabled:
            if generator is None:
                raise ValueError("the locality regulariser needs generator=(cfg, variables) for its samples")
            ws = locality_latents(*generator, settings)
        tuner = Tuner(networks, settings, locality_ws=ws)
    images = np.asarray(images_NxHxWxC)
    pivots = np.asarray(pivots_NxLxD, np.float32)
    res, nets = tuner.nets.resolution, tuner.nets
    if images.ndim != 4 or images.shape[1:] != (res, res, 3):
        raise ValueError(f"images must be [N, {res}, {res}, 3] (the generator's resolution), got {images.shape}")
    if pivots.ndim == 4 and pivots.shape[1] == 1:
        pivots = pivots[:, 0]
    if pivots.shape != (len(images), nets.num_ws, nets.w_dim):
        raise ValueError(f"pivots must be [{len(images)}, {nets.num_ws}, {nets.w_dim}], got {pivots.shape}")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 127.5 - 1.0
    devices = tuner.mesh.size
    batch = -(-max(1, batch_size) // devices) * devices
    keys = ("images", "terms", "losses", "steps", "converged", "failed")
    parts, deltas = [], []
    for start in range(0, len(images), batch):
        n = min(batch, len(images) - start)
        pad = lambda a: np.concatenate([a[start:start + n], np.repeat(a[start + n - 1:start + n], batch - n, 0)])  # noqa: E731
        out = tuner.tune(pad(images).astype(np.float32), pad(pivots))
        parts.append({k: local_rows(out[k])[:n] for k in keys})
        rows = jax.tree.map(local_rows, out["delta"])
        deltas += [jax.tree.map(lambda leaf, i=i: leaf[i], rows) for i in range(n)]
    joined = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    joined["terms"] = {name: joined["terms"][:, t] for t, name in enumerate(tuner.term_names)}
    joined["losses"] = {name: joined["losses"][:, t] for t, name in enumerate(LOSS_COLUMNS)}
    joined["deltas"] = deltas
    return joined


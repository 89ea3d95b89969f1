"""The inversion engine: a pure per-image optimisation step, vmapped over images, jitted once, sharded.

Data flow of one batch::

    targets_BxHxWxC --prepare--> per-image constants of every loss term (F(x) binarised, ID embedding, ...)
    state (latent, Adam state, failed flag) --step (jitted, vmapped)--> state, dispatched asynchronously
    ... chunk after chunk of steps; the host reads metrics only between chunks ...
    state --finish--> reconstructions, final loss terms, latents

Every image is an independent problem (METHOD.md): per-image loss, per-image Adam state, no batch
statistics, so an image inverted alone or in a batch gets the same latent up to float reduction order.
The loss is a weighted sum of named terms (``magec_jax.inversion.terms``: the paper's four are registered like
any user's). The weights of every step come from a ``[total_steps, T]`` table over the T weighted terms,
indexed by the step number, an array argument, so the phase switch never recompiles: the step compiles once per
batch shape. A non-finite loss freezes that image (its ``failed`` flag is set and its latent stops changing)
while the others go on.

How the step is computed is :class:`ComputeOptions` (``InversionSettings.compute``), each option ``"auto"`` by
default, resolved per platform from ``jax.default_backend()`` (:data:`AUTO`): modulation (fused or not),
precision (float32, TF32 or bf16), the loop (one jitted call per step, asynchronously dispatched, or
``lax.scan`` over ``chunk_steps`` steps per call), donation of the state buffers, and rematerialisation of the
generator's blocks. Every choice gives the same latents within its precision's tolerance
(``tests/test_engine_options.py``); they differ in speed and memory (``benchmarks/device_suite.py``).

Sharding: the batch axis of every per-image array is sharded over a 1-D mesh ``('data',)`` of all
devices (all hosts under ``jax.distributed``); frozen network weights are replicated.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from magec_jax.inversion.networks import DistanceFn, Networks, SynthesizeFn
from magec_jax.inversion.settings import (
    AUTO,
    ComputeOptions,
    InversionSettings,
    NetworkCompute,
    NoisePhase,
    Phase,
)
from magec_jax.inversion.terms import LossTerm, TermInputs, bind_terms

__all__ = [
    "AUTO", "ComputeOptions", "DistanceFn", "Engine", "InversionSettings", "NetworkCompute", "Networks",
    "NoisePhase", "Phase", "State", "SynthesizeFn", "Targets", "invert_arrays", "local_rows", "make_mesh",
]


class Targets(NamedTuple):
    """Per-image constants of the loss, computed once per batch (batch axis first on every leaf).

    ``masks`` (None: every pixel counts) restricts the loss to each image's content area: the terms see G(w)
    where the mask is 1 and the target where it is 0, so pixels outside it (a letterbox's bands) add nothing to any term
    and send no gradient; the terms' means still run over the whole image."""

    images: jax.Array  # [B, H, W, C] in [-1, 1]
    prepared: dict  # term name -> that term's prepared constants (terms with a ``prepare`` only)
    masks: jax.Array | None = None  # [B, H, W, 1] in {0, 1}


class State(NamedTuple):
    """Per-image optimisation state (leading batch axis on every leaf)."""

    latent: jax.Array  # [B, L, D] for W+, [B, 1, D] for W
    noise: tuple  # per noise layer [B, h, w]; () when the noise stage is off
    opt: Any
    failed: jax.Array  # [B] bool: a non-finite loss was met; the latent is frozen since
    losses: jax.Array  # [B, 1 + T]: the total and the T weighted terms (Engine.weighted order), last step taken


class Engine:
    """Compiled inversion of batches of images for one set of networks and settings.

    Args:
      nets: the frozen networks.
      settings: the optimisation settings.
      mesh: device mesh with a ``'data'`` axis (default: all devices).

    Attributes:
      term_names: every term these networks can compute, in registry order: the columns of the ``terms``
        that :meth:`invert` and :meth:`term_gradients` report.
      weighted: the terms some phase weights (the columns of ``State.losses`` after the total).
    """

    def __init__(self, nets: Networks, settings: InversionSettings, mesh: Mesh | None = None):
        self.settings = settings
        self.compute = settings.compute.resolved()
        self.nets = nets = nets.for_compute(self.compute.networks)
        self.mesh = mesh if mesh is not None else make_mesh()
        self.terms: dict[str, LossTerm] = bind_terms(nets, settings)
        self.term_names: tuple[str, ...] = tuple(self.terms)
        self.weighted: tuple[str, ...] = settings.weighted_terms
        self._optimizer = optax.chain(
            optax.scale_by_adam(b1=settings.adam_b1, b2=settings.adam_b2, eps=settings.adam_eps),
            optax.scale_by_learning_rate(settings.schedule()),
        )
        self._noise_optimizer = None
        if settings.noise_phase is not None:
            self._noise_optimizer = optax.adam(
                settings.noise_phase.lr, b1=settings.adam_b1, b2=settings.adam_b2, eps=settings.adam_eps
            )
            noise_weights = settings.noise_phase.weights
            self._noise_weights = jnp.asarray([noise_weights.get(t, 0.0) for t in self.weighted], jnp.float32)
            self._noise_terms = tuple(t for t in self.weighted if noise_weights.get(t, 0.0) != 0)
        self._weights = jnp.asarray(settings.weight_table(self.weighted))
        data = NamedSharding(self.mesh, P("data"))
        replicated = NamedSharding(self.mesh, P())
        self.data_sharding, self.replicated = data, replicated
        arrays = dict(generator=nets.generator, w_avg=nets.w_avg, noise_init=nets.noise_init,
                      terms={name: term.variables for name, term in self.terms.items()})
        self._arrays = jax.device_put(arrays, replicated)
        # Every entry point is jitted here, once, and traced at the options' matmul precision.
        jit = functools.partial(jit_at_precision, self.compute.matmul_precision, out_shardings=data)
        donate = (1,) if self.compute.donate == "on" else ()
        self._prepare = jit(self._prepare_impl)
        self._init = jit(self._init_impl, static_argnums=(1,))
        self._run = jit(self._step_impl, donate_argnums=donate)
        self._run_chunk = jit(self._chunk_impl, donate_argnums=donate)
        self._finish = jit(self._finish_impl)
        self._term_gradients = jit_at_precision(self.compute.matmul_precision, self._term_gradients_impl)
        if self._noise_optimizer is not None:
            self._noise_init = jit(self._noise_init_impl, donate_argnums=donate)
            self._noise_run = jit(self._noise_step_impl, donate_argnums=donate)
            self._noise_run_chunk = jit(self._noise_chunk_impl, donate_argnums=donate)

    # ---- pure per-image pieces -------------------------------------------------------------------

    def _ws(self, latent_LxD: jax.Array) -> jax.Array:
        return jnp.broadcast_to(latent_LxD, (self.nets.num_ws, self.nets.w_dim))

    def _render(self, arrays: dict, latent_LxD: jax.Array, noise: tuple) -> jax.Array:
        noise_maps = tuple(n[None] for n in noise) if noise else None
        return self.nets.synthesize(arrays["generator"], self._ws(latent_LxD)[None], noise_maps)[0]

    def _term_values(self, arrays: dict, latent_LxD, noise: tuple, target, names: Sequence[str]) -> jax.Array:
        """The terms ``names`` of one image (no batch axis) as a ``[len(names)]`` vector; renders G(w) only
        when one of them reads the image."""
        renders = any(self.terms[n].renders for n in names)
        image = self._render(arrays, latent_LxD, noise) if renders else None
        if image is not None and target.masks is not None:
            image = jnp.where(target.masks > 0, image, target.images)
        ws = self._ws(latent_LxD)
        values = []
        for name in names:
            inputs = TermInputs(image, ws, target.images, target.prepared.get(name))
            values.append(jnp.asarray(self.terms[name].loss(arrays["terms"][name], inputs), jnp.float32))
        return jnp.stack(values) if values else jnp.zeros((0,), jnp.float32)

    def _step(self, arrays, state_i: State, target_i: Targets, weights_T):
        """One Adam step of one image (no batch axis)."""

        def loss_fn(latent):
            terms = self._term_values(arrays, latent, state_i.noise, target_i, self.weighted)
            return jnp.dot(weights_T, terms), terms

        (loss, terms), grad = jax.value_and_grad(loss_fn, has_aux=True)(state_i.latent)
        updates, opt = self._optimizer.update(grad, state_i.opt, state_i.latent)
        ok = jnp.isfinite(loss) & jnp.all(jnp.isfinite(grad)) & ~state_i.failed
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        latent = keep(state_i.latent + updates, state_i.latent)
        opt = jax.tree.map(keep, opt, state_i.opt)
        losses = jnp.concatenate([loss[None], terms])
        return state_i._replace(latent=latent, opt=opt, failed=~ok, losses=losses)

    # ---- batched, jitted entry points --------------------------------------------------------------

    def _prepare_impl(self, arrays, images_BxHxWxC, masks_BxHxW) -> Targets:
        images = images_BxHxWxC.astype(jnp.float32)
        prepared = {name: term.prepare(arrays["terms"][name], images)
                    for name, term in self.terms.items() if term.prepare is not None}
        masks = None if masks_BxHxW is None else masks_BxHxW.astype(jnp.float32)[..., None]
        return Targets(images, prepared, masks)

    def _init_impl(self, arrays, batch: int) -> State:
        rows = 1 if self.settings.latent_space == "w" else self.nets.num_ws
        latent = jnp.broadcast_to(arrays["w_avg"].astype(jnp.float32), (batch, rows, self.nets.w_dim))
        opt = jax.vmap(self._optimizer.init)(latent)
        losses = jnp.zeros((batch, 1 + len(self.weighted)), jnp.float32)
        return State(latent, (), opt, jnp.zeros((batch,), bool), losses)

    def _step_impl(self, arrays, state: State, targets: Targets, step) -> State:
        """One step of every image; ``step`` (an int32 array) picks the loss weights."""
        weights = self._weights[jnp.minimum(step, self._weights.shape[0] - 1)]
        return jax.vmap(self._step, in_axes=(None, 0, 0, None))(arrays, state, targets, weights)

    def _chunk_impl(self, arrays, state: State, targets: Targets, steps) -> State:
        """The steps numbered by the int32 vector ``steps``, in one ``lax.scan``."""
        body = lambda st, step: (self._step_impl(arrays, st, targets, step), None)  # noqa: E731
        return jax.lax.scan(body, state, steps)[0]

    def _finish_impl(self, arrays, state: State, targets: Targets):
        """Final reconstructions and every available loss term (whatever the weights) of every image."""

        def one(latent, noise, target):
            img = self._render(arrays, latent, noise)
            return img, self._term_values(arrays, latent, noise, target, self.term_names)

        images, terms = jax.vmap(one)(state.latent, state.noise, targets)
        ws = jax.vmap(self._ws)(state.latent)
        return ws, images, terms

    # Image2StyleGAN++ noise stage: same structure, the noise maps are the optimised variable.
    def _noise_init_impl(self, arrays, state: State) -> State:
        b = state.latent.shape[0]
        noise = tuple(jnp.broadcast_to(n.astype(jnp.float32), (b, *n.shape)) for n in arrays["noise_init"])
        opt = jax.vmap(self._noise_optimizer.init)(noise)
        return state._replace(noise=noise, opt=opt)

    def _noise_step(self, arrays, state_i: State, target_i: Targets):
        positions = [self.weighted.index(t) for t in self._noise_terms]

        def loss_fn(noise):
            values = self._term_values(arrays, state_i.latent, noise, target_i, self._noise_terms)
            terms = jnp.zeros((len(self.weighted),), jnp.float32).at[jnp.asarray(positions, jnp.int32)].set(values)
            return jnp.dot(self._noise_weights, terms), terms

        (loss, terms), grad = jax.value_and_grad(loss_fn, has_aux=True)(state_i.noise)
        updates, opt = self._noise_optimizer.update(grad, state_i.opt, state_i.noise)
        ok = jnp.isfinite(loss) & ~state_i.failed
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        noise = jax.tree.map(keep, optax.apply_updates(state_i.noise, updates), state_i.noise)
        opt = jax.tree.map(keep, opt, state_i.opt)
        return state_i._replace(noise=noise, opt=opt, failed=~ok, losses=jnp.concatenate([loss[None], terms]))

    def _noise_step_impl(self, arrays, state: State, targets: Targets, step) -> State:
        """One noise step of every image (``step`` is unused: the noise stage has one set of weights)."""
        del step
        return jax.vmap(self._noise_step, in_axes=(None, 0, 0))(arrays, state, targets)

    def _noise_chunk_impl(self, arrays, state: State, targets: Targets, steps) -> State:
        body = lambda st, step: (self._noise_step_impl(arrays, st, targets, step), None)  # noqa: E731
        return jax.lax.scan(body, state, steps)[0]

    def _term_gradients_impl(self, arrays, latents_BxLxD: jax.Array, targets: Targets) -> tuple[jax.Array, jax.Array]:
        def one(latent, target):
            def terms(lat):
                return self._term_values(arrays, lat, (), target, self.term_names)

            jac_TxLxD = jax.jacrev(terms)(latent)
            return terms(latent), jnp.sqrt(jnp.sum(jnp.square(jac_TxLxD), axis=(1, 2)))

        return jax.vmap(one)(latents_BxLxD, targets)

    def term_gradients(self, latents_BxLxD: jax.Array, images_BxHxWxC: jax.Array) -> tuple[np.ndarray, np.ndarray]:
        """Each loss term and the norm of its gradient in the latent, unweighted, for diagnosing the balance
        of the loss (how much the MAGEC term can steer the latent against the reconstruction terms).

        Args:
          latents_BxLxD: W+ latents (e.g. the ``w`` of finished inversions), rendered with the default noise.
          images_BxHxWxC: their target images in [-1, 1] at G's resolution.

        Returns:
          ``(terms_BxT, grad_norms_BxT)``, columns in :attr:`term_names` order. Multiply by a phase's weights
          to compare what the optimiser sees.
        """
        targets = self.prepare(images_BxHxWxC)
        latents = jax.device_put(jnp.asarray(latents_BxLxD, jnp.float32), self.data_sharding)
        terms, norms = self._term_gradients(self._arrays, latents, targets)
        return local_rows(terms), local_rows(norms)

    # ---- host-side driver ---------------------------------------------------------------------------

    def invert(
        self,
        images_BxHxWxC: jax.Array,
        *,
        masks_BxHxW: jax.Array | None = None,
        on_chunk: Callable[[int, int, State], None] | None = None,
    ) -> dict[str, jax.Array]:
        """Inverts one batch (its size a multiple of the mesh size; images already at G's resolution).

        Args:
          images_BxHxWxC: targets in [-1, 1], a global array sharded over ``'data'`` or a host array.
          masks_BxHxW: each image's content area (1 inside, 0 on letterbox bands; :class:`Targets`), sharded
            like the images; None: the whole image (a separate compiled program).
          on_chunk: called as ``on_chunk(steps_done, total_steps, state)`` every ``chunk_steps`` steps, the
            only place where the host looks at device values (for progress).

        Returns:
          dict with ``ws`` ``[B, num_ws, w_dim]``, ``images`` (reconstructions), ``terms`` ``[B, T]`` (the
          final value of every term in :attr:`term_names`, weighted or not), ``failed`` ``[B]``, ``noise``
          (tuple, empty without noise stage).
        """
        s = self.settings
        targets = self.prepare(images_BxHxWxC, masks_BxHxW)
        state = self._init(self._arrays, targets.images.shape[0])
        noise_steps = 0 if s.noise_phase is None else s.noise_phase.steps
        total = s.total_steps + noise_steps
        if on_chunk is None:
            on_chunk = lambda done, total, state: None  # noqa: E731
        state = self._loop(self._run, self._run_chunk, state, targets, 0, s.total_steps, total, on_chunk)
        if noise_steps:
            state = self._noise_init(self._arrays, state)
            state = self._loop(
                self._noise_run, self._noise_run_chunk, state, targets, s.total_steps, noise_steps, total, on_chunk
            )
        ws, recon, terms = self._finish(self._arrays, state, targets)
        return dict(ws=ws, images=recon, terms=terms, failed=state.failed, noise=state.noise)

    def prepare(self, images_BxHxWxC: jax.Array, masks_BxHxW: jax.Array | None = None) -> Targets:
        """The per-image constants of every term for a batch of targets (sharded over ``'data'``), with their
        content masks when given."""
        def placed(array):
            if array is None or (isinstance(array, jax.Array) and array.sharding == self.data_sharding):
                return array
            return jax.device_put(array, self.data_sharding)

        return self._prepare(self._arrays, placed(images_BxHxWxC), placed(masks_BxHxW))

    def evaluate(self, latents_BxLxD: jax.Array, images_BxHxWxC: jax.Array,
                 masks_BxHxW: jax.Array | None = None) -> dict[str, jax.Array]:
        """Renders latents (default noise) and computes every term in :attr:`term_names` against the targets
        (within their content masks when given).

        Returns:
          dict with ``ws`` ``[B, num_ws, w_dim]``, ``images`` (renders) and ``terms`` ``[B, T]``, exactly as
          :meth:`invert` reports a finished inversion.
        """
        targets = self.prepare(images_BxHxWxC, masks_BxHxW)
        latents = jax.device_put(jnp.asarray(latents_BxLxD, jnp.float32), self.data_sharding)
        state = self._init(self._arrays, latents.shape[0])._replace(latent=latents)
        ws, images, terms = self._finish(self._arrays, state, targets)
        return dict(ws=ws, images=images, terms=terms)

    # ---- step-level access: research loops, benchmarks and profiles ---------------------------------

    def init(self, batch: int) -> State:
        """The initial state of ``batch`` images (latents at ``w_avg``, fresh optimiser), sharded over
        ``'data'``."""
        return self._init(self._arrays, batch)

    def step(self, state: State, targets: Targets, step: int | np.ndarray) -> State:
        """Latent-phase steps of every image: an integer ``step`` runs that one step (one dispatch); a vector of
        step numbers runs them in order as one ``lax.scan``. The step number indexes the phase weights and
        the learning-rate schedule. ``state`` is donated (unusable afterwards) when ``compute.donate`` is on."""
        if np.ndim(step):
            return self._run_chunk(self._arrays, state, targets, np.asarray(step, np.int32))
        return self._run(self._arrays, state, targets, np.int32(step))

    def finish(self, state: State, targets: Targets) -> dict[str, jax.Array]:
        """The final rendering of a state: ``ws``, ``images`` and ``terms`` ``[B, T]``, as :meth:`invert`
        returns them."""
        ws, images, terms = self._finish(self._arrays, state, targets)
        return dict(ws=ws, images=images, terms=terms)

    def compile(self, entry: str, *args: Any) -> Callable[..., Any]:
        """Compiles an entry point ahead of time for the shapes of ``args`` (arrays or
        ``jax.ShapeDtypeStruct``) and returns it bound to the engine's networks, called with arguments of
        those shapes; the time this call takes is the compile time. The result's ``.func`` is JAX's compiled
        executable (``memory_analysis()``, ``cost_analysis()``).

        ``entry``: ``"prepare"`` (images), ``"step"`` (state, targets, step number or vector of step numbers:
        as :meth:`step`) or ``"finish"`` (state, targets; returns the tuple ``(ws, images, terms)``).
        """
        if entry == "step":
            fn = self._run_chunk if np.ndim(args[2]) else self._run
        elif entry in ("prepare", "finish"):
            fn = self._prepare if entry == "prepare" else self._finish
        else:
            raise ValueError(f"entry must be 'prepare', 'step' or 'finish', got {entry!r}")
        return functools.partial(fn.lower(self._arrays, *args).compile(), self._arrays)

    def compiled_variants(self) -> dict[str, int]:
        """How many times each jitted entry point has compiled (one per batch shape; a recompile inside an
        inversion would show here)."""
        fns = dict(step=self._run, scan_chunk=self._run_chunk, prepare=self._prepare, finish=self._finish)
        return {name: fn._cache_size() for name, fn in fns.items()}

    def _loop(self, run, run_chunk, state: State, targets: Targets, offset: int, steps: int, total: int, on_chunk):
        """``steps`` steps of ``run`` (one step) or ``run_chunk`` (a ``lax.scan`` over a vector of step numbers)
        as ``compute.loop`` says; ``on_chunk(offset + steps done, total, state)`` after every chunk."""
        chunk = max(1, self.settings.chunk_steps)
        for start in range(0, steps, chunk):
            count = min(chunk, steps - start)
            if self.compute.loop == "scan":
                state = run_chunk(self._arrays, state, targets, np.arange(start, start + count, dtype=np.int32))
            else:
                for step in range(start, start + count):
                    state = run(self._arrays, state, targets, np.int32(step))
            on_chunk(offset + start + count, total, state)
        return state


def invert_arrays(
    networks: Networks,
    images_NxHxWxC: np.ndarray,
    settings: InversionSettings | None = None,
    *,
    batch_size: int = 8,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Inverts images held in memory, batch after batch: the shortest way from Python to latents.

    Args:
      networks: the frozen networks (``load_bundle(path).networks()``).
      images_NxHxWxC: targets at the generator's resolution, uint8 in [0, 255] or float in [-1, 1].
      settings: the optimisation (default: the paper's MAGEC protocol, METHOD.md).
      batch_size: images per compiled batch (rounded up to a multiple of the device count; the last batch is
        padded, so every batch has one shape and compiles once).
      engine: an engine to reuse across calls (its networks and settings win over the arguments).

    Returns:
      dict of numpy arrays: ``ws`` ``[N, num_ws, w_dim]``, ``images`` (reconstructions in [-1, 1]),
      ``terms`` (term name -> ``[N]`` final value), ``failed`` ``[N]`` (non-finite loss met).
    """
    engine = engine if engine is not None else Engine(networks, settings or InversionSettings())
    images = np.asarray(images_NxHxWxC)
    res = engine.nets.resolution
    if images.ndim != 4 or images.shape[1:] != (res, res, 3):
        raise ValueError(f"images must be [N, {res}, {res}, 3] (the generator's resolution), got {images.shape}")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 127.5 - 1.0
    devices = engine.mesh.size
    batch = -(-max(1, batch_size) // devices) * devices
    parts = []
    for start in range(0, len(images), batch):
        chunk = images[start: start + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
        out = engine.invert(padded.astype(np.float32))
        parts.append({k: local_rows(out[k])[: len(chunk)] for k in ("ws", "images", "terms", "failed")})
    joined = {k: np.concatenate([p[k] for p in parts]) for k in ("ws", "images", "terms", "failed")}
    joined["terms"] = {name: joined["terms"][:, t] for t, name in enumerate(engine.term_names)}
    return joined


def jit_at_precision(precision: str, fn: Callable, **jit_kwargs) -> Callable:
    """``jax.jit(fn)`` traced under ``jax.default_matmul_precision(precision)``."""

    @functools.wraps(fn)
    def traced(*args):
        with jax.default_matmul_precision(precision):
            return fn(*args)

    return jax.jit(traced, **jit_kwargs)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D ``('data',)`` mesh over ``devices`` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), ("data",))


def local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in global order, as numpy."""
    if array.is_fully_addressable:
        return np.asarray(array)
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


"""The inversion engine: a pure per-image optimisation step, vmapped over images, jitted once, sharded.

Data flow of one batch::

    targets_BxHxWxC --prepare--> per-image constants (F(x) binarised, ID embedding)
    state (latent, Adam state, failed flag) --step (jitted, vmapped)--> state, dispatched asynchronously
    ... chunk after chunk of steps; the host reads metrics only between chunks ...
    state --finish--> reconstructions, final loss terms, latents

Every image is an independent problem (METHOD.md): per-image loss, per-image Adam state, no batch
statistics, so an image inverted alone or in a batch gets the same latent up to float reduction order.
The loss weights of every step come from a ``[total_steps, 4]`` table indexed by the step number, an array
argument, so the phase switch never recompiles: the step compiles once per batch shape. A non-finite loss
freezes that image (its ``failed`` flag is set and its latent stops changing) while the others go on.

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

import dataclasses
import functools
from typing import Any, Callable, Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from magec_jax.errors import ConfigError, MagecError
from magec_jax.inversion.magec_loss import EditMode, binarize, magec_loss
from magec_jax.models.interfaces import Descriptor, IdentityEmbedder

LOSS_TERMS = ("mse", "lpips", "id", "magec")

# (generator variables, ws_BxLxD, noise maps (tuple of [B, h, w]) or None) -> images_BxHxWxC
SynthesizeFn = Callable[[Any, jax.Array, Any], jax.Array]
# (variables, x_BxHxWxC, y_BxHxWxC) -> distances_B
DistanceFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Phase:
    """A run of optimisation steps with fixed loss weights."""

    steps: int
    mse: float
    lpips: float
    id: float = 0.0
    magec: float = 0.0

    def weights(self) -> tuple[float, ...]:
        return tuple(getattr(self, t) for t in LOSS_TERMS)


@dataclasses.dataclass(frozen=True)
class NoisePhase:
    """The Image2StyleGAN++ noise stage: optimise the noise maps with the latent frozen."""

    steps: int
    lr: float = 0.07
    mse: float = 1.0
    lpips: float = 1.0


@dataclasses.dataclass(frozen=True)
class NetworkCompute:
    """What the compute options ask of the networks themselves (their static callables; weights unchanged).

    Attributes:
      fused_modulation: the generator's modulated convolutions as per-sample kernels (one grouped
        convolution) instead of scaled activations with one shared kernel.
      dtype: compute dtype of the generator's convolutions and the LPIPS trunk (``"float32"`` or
        ``"bfloat16"``); styles, demodulation, the skip image and every loss stay float32.
      remat: rematerialise each generator block in the backward pass (``jax.checkpoint``).
    """

    fused_modulation: bool = False
    dtype: Literal["float32", "bfloat16"] = "float32"
    remat: bool = False


_CHOICES = dict(
    modulation=("auto", "fused", "non_fused"),
    precision=("auto", "float32", "tf32", "bf16"),
    loop=("auto", "dispatch", "scan"),
    donate=("auto", "on", "off"),
    remat=("auto", "on", "off"),
)
# jax_default_matmul_precision of each precision: float32 pins full float32 (XLA:GPU would otherwise use
# TF32), tf32 allows TF32 on GPUs (3-pass bf16 on TPUs); bf16 computes the big convolution trunks in bfloat16
# (NetworkCompute.dtype) and lets the rest run at the backend's default precision.
_MATMUL_PRECISION = dict(float32="highest", tf32="tensorfloat32", bf16="default")


@dataclasses.dataclass(frozen=True)
class ComputeOptions:
    """How an inversion step is computed; never what it computes (each choice gives the same latents within
    its precision's tolerance).

    Attributes:
      modulation: ``"fused"`` (per-sample kernels, NVIDIA's eval path) or ``"non_fused"`` (scaled
        activations, one shared kernel).
      precision: ``"float32"``, ``"tf32"`` (float32 storage, TF32 matrix units on GPUs) or ``"bf16"`` (the
        generator and the LPIPS trunk compute in bfloat16).
      loop: ``"dispatch"`` (one jitted call per step; the host queues them asynchronously) or ``"scan"``
        (``lax.scan`` over ``InversionSettings.chunk_steps`` steps per call).
      donate: ``"on"`` lets each call reuse the state's buffers for its output.
      remat: ``"on"`` rematerialises the generator's blocks in the backward pass (less memory, about one more
        generator forward pass per step), so that larger batches fit.

    Every field may be ``"auto"``: the platform's choice in :data:`AUTO`, see :meth:`resolved`.
    """

    modulation: Literal["auto", "fused", "non_fused"] = "auto"
    precision: Literal["auto", "float32", "tf32", "bf16"] = "auto"
    loop: Literal["auto", "dispatch", "scan"] = "auto"
    donate: Literal["auto", "on", "off"] = "auto"
    remat: Literal["auto", "on", "off"] = "auto"

    def __post_init__(self):
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"config.inversion.compute.{name} must be one of {', '.join(allowed)}, got {value!r}")

    def resolved(self, backend: str | None = None) -> ComputeOptions:
        """Every ``"auto"`` replaced by ``AUTO[backend]`` (default: ``jax.default_backend()``)."""
        backend = backend or jax.default_backend()
        if backend not in AUTO:
            raise ConfigError(f"config.inversion.compute: no automatic choices for platform {backend!r} "
                              f"(known: {', '.join(AUTO)})")
        auto = AUTO[backend]
        return dataclasses.replace(
            self, **{f.name: getattr(auto, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) == "auto"}
        )

    @property
    def matmul_precision(self) -> str:
        """``jax_default_matmul_precision`` the engine traces with (options resolved)."""
        return _MATMUL_PRECISION[self.precision]

    @property
    def networks(self) -> NetworkCompute:
        """What these (resolved) options ask of the networks."""
        return NetworkCompute(
            fused_modulation=self.modulation == "fused",
            dtype="bfloat16" if self.precision == "bf16" else "float32",
            remat=self.remat == "on",
        )


# The platform choices behind "auto". CPU: measured on a 2-core AMD EPYC (Zen 4) with jax 0.10.2 (README,
# benchmarks/results): under vmap the fused modulation's grouped convolutions ran ~5x slower in the backward
# pass; XLA:CPU ran the step 2-3x slower inside a while loop than as one call per step; bf16 convolutions are
# not faster on XLA:CPU. GPU and TPU: chosen before any accelerator run (TF32 / bf16 matrix units, scan to
# drop per-step host work); benchmarks/device_suite.py measures every alternative and decides them.
AUTO: dict[str, ComputeOptions] = {
    "cpu": ComputeOptions(modulation="non_fused", precision="float32", loop="dispatch", donate="on", remat="off"),
    "gpu": ComputeOptions(modulation="non_fused", precision="tf32", loop="scan", donate="on", remat="off"),
    "tpu": ComputeOptions(modulation="non_fused", precision="bf16", loop="scan", donate="on", remat="off"),
}


@dataclasses.dataclass(frozen=True)
class InversionSettings:
    """Everything that decides the optimisation (METHOD.md defaults)."""

    phases: tuple[Phase, ...] = (
        Phase(100, mse=1e-3, lpips=0.5, id=3e-4, magec=3e-4),
        Phase(100, mse=0.5, lpips=0.5, id=3e-4, magec=3e-4),
    )
    lr: float = 0.07
    lr_decay: float = 0.8
    lr_decay_every: int = 25
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    latent_space: str = "w+"  # "w+" (num_ws x w_dim) or "w" (one w_dim vector for every layer)
    magec_alpha: float = 3.0
    magec_mode: EditMode = "flip"
    noise_phase: NoisePhase | None = None
    chunk_steps: int = 25  # steps between progress reports (the only host reads of device values); scan length
    compute: ComputeOptions = ComputeOptions()

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    def uses(self, term: str) -> bool:
        """Whether a loss term has a non-zero weight in any phase (inactive terms are not computed)."""
        return any(getattr(p, term) != 0 for p in self.phases)

    def weight_table(self) -> np.ndarray:
        """``[total_steps, 4]`` float32 loss weights, one row per step."""
        rows = [p.weights() for p in self.phases for _ in range(p.steps)]
        return np.asarray(rows, np.float32).reshape(-1, len(LOSS_TERMS))

    def schedule(self) -> optax.Schedule:
        """lr * decay ** (step // every), never restarted between phases."""
        return optax.exponential_decay(
            self.lr, transition_steps=self.lr_decay_every, decay_rate=self.lr_decay, staircase=True
        )


@dataclasses.dataclass(frozen=True)
class Networks:
    """The frozen networks of an inversion. Callables are static; array fields are traced pytrees.

    Attributes:
      synthesize: the generator's synthesis, ``(variables, ws_BxLxD, noise) -> images_BxHxWxC``.
      generator: its variables.
      num_ws, w_dim: latent shape.
      resolution: side of the generated (square) images.
      w_avg: ``[w_dim]`` initial latent (mean of mapped z).
      noise_init: the generator's constant noise maps (tuple of ``[h, w]``), start of the noise stage.
      lpips: perceptual distance ``(variables, x, y) -> [B]`` (resizes internally).
      lpips_variables: its weights.
      lpips_target, lpips_to_target: optional split of ``lpips`` into ``(variables, y) -> features`` and
        ``(variables, x, features) -> [B]``; when given, the targets' features are computed once per batch
        instead of at every step (the target half of LPIPS is constant).
      identity, descriptor: optional ID network and attribute descriptor F.
      linknet: LinkNet variables (needed when the MAGEC term is used).
      directions: ``[K, w_dim]`` or ``[K, num_ws, w_dim]`` unit boundaries in F's output order.
      compute: what the callables compute with.
      compute_variant: builds these networks for another :class:`NetworkCompute` (same weights); None when
        the callables are fixed (they then serve only ``compute``).
    """

    synthesize: SynthesizeFn
    generator: Any
    num_ws: int
    w_dim: int
    resolution: int
    w_avg: Any
    lpips: DistanceFn
    lpips_variables: Any
    noise_init: tuple = ()
    lpips_target: Callable[[Any, jax.Array], Any] | None = None
    lpips_to_target: Callable[[Any, jax.Array, Any], jax.Array] | None = None
    identity: IdentityEmbedder | None = None
    descriptor: Descriptor | None = None
    linknet: Any = None
    directions: Any = None
    compute: NetworkCompute = NetworkCompute()
    compute_variant: Callable[[NetworkCompute], Networks] | None = None

    def for_compute(self, compute: NetworkCompute) -> Networks:
        """These networks computing as ``compute`` asks (themselves when they already do)."""
        if compute == self.compute:
            return self
        if self.compute_variant is None:
            raise MagecError(f"these networks compute with {self.compute} and cannot run with {compute}")
        return self.compute_variant(compute)

    def arrays(self) -> dict:
        """The traced part: every weight the step reads."""
        return dict(
            generator=self.generator,
            w_avg=self.w_avg,
            noise_init=self.noise_init,
            lpips=self.lpips_variables,
            identity=None if self.identity is None else self.identity.variables,
            descriptor=None if self.descriptor is None else self.descriptor.variables,
            linknet=self.linknet,
            directions=self.directions,
        )


class Targets(NamedTuple):
    """Per-image constants of the loss, computed once per batch."""

    images: jax.Array  # [B, H, W, C]
    attributes: jax.Array  # [B, K] binarised F(x) (K = 0 when unused)
    embeddings: jax.Array  # [B, E] unit ID embeddings (E = 0 when unused)
    lpips_features: Any  # precomputed LPIPS features of the targets (batch axis first), or None


class State(NamedTuple):
    """Per-image optimisation state (leading batch axis on every leaf)."""

    latent: jax.Array  # [B, L, D] for W+, [B, 1, D] for W
    noise: tuple  # per noise layer [B, h, w]; () when the noise stage is off
    opt: Any
    failed: jax.Array  # [B] bool: a non-finite loss was met; the latent is frozen since
    losses: jax.Array  # [B, 5]: total and the 4 terms, at the last step taken


class Engine:
    """Compiled inversion of batches of images for one set of networks and settings.

    Args:
      nets: the frozen networks.
      settings: the optimisation settings.
      mesh: device mesh with a ``'data'`` axis (default: all devices).
    """

    def __init__(self, nets: Networks, settings: InversionSettings, mesh: Mesh | None = None):
        self.settings = settings
        self.compute = settings.compute.resolved()
        self.nets = nets = nets.for_compute(self.compute.networks)
        self.mesh = mesh if mesh is not None else make_mesh()
        # Terms that can be evaluated with the networks given, and terms weighted in some phase.
        self.available = dict(
            mse=True,
            lpips=True,
            id=nets.identity is not None,
            magec=None not in (nets.descriptor, nets.linknet, nets.directions),
        )
        self.use = {t: settings.uses(t) for t in LOSS_TERMS}
        if self.use["id"] and not self.available["id"]:
            raise ValueError("the settings weight the ID loss but no identity network was given")
        if self.use["magec"] and not self.available["magec"]:
            raise ValueError("the settings weight the MAGEC loss but descriptor, LinkNet or directions are missing")
        self._optimizer = optax.chain(
            optax.scale_by_adam(b1=settings.adam_b1, b2=settings.adam_b2, eps=settings.adam_eps),
            optax.scale_by_learning_rate(settings.schedule()),
        )
        self._noise_optimizer = None
        if settings.noise_phase is not None:
            self._noise_optimizer = optax.adam(
                settings.noise_phase.lr, b1=settings.adam_b1, b2=settings.adam_b2, eps=settings.adam_eps
            )
        self._weights = jnp.asarray(settings.weight_table())
        data = NamedSharding(self.mesh, P("data"))
        replicated = NamedSharding(self.mesh, P())
        self.data_sharding, self.replicated = data, replicated
        self._arrays = jax.device_put(nets.arrays(), replicated)
        # Every entry point is jitted here, once, and traced at the options' matmul precision.
        jit = functools.partial(_jit_at_precision, self.compute.matmul_precision, out_shardings=data)
        donate = (1,) if self.compute.donate == "on" else ()
        self._prepare = jit(self._prepare_impl)
        self._init = jit(self._init_impl, static_argnums=(1,))
        self._run = jit(self._step_impl, donate_argnums=donate)
        self._run_chunk = jit(self._chunk_impl, donate_argnums=donate)
        self._finish = jit(self._finish_impl)
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

    def _terms(self, arrays: dict, img, latent_LxD, target: Targets, use: dict) -> jax.Array:
        """The four loss terms of one rendered image ``img``, ``[4]``; unused terms are 0, not computed."""
        zero = jnp.zeros((), jnp.float32)
        mse = jnp.mean(jnp.square(img - target.images)) if use["mse"] else zero
        if not use["lpips"]:
            lp = zero
        elif target.lpips_features is not None:
            features = jax.tree.map(lambda f: f[None], target.lpips_features)
            lp = self.nets.lpips_to_target(arrays["lpips"], img[None], features)[0]
        else:
            lp = self.nets.lpips(arrays["lpips"], img[None], target.images[None])[0]
        if use["id"]:
            emb = self.nets.identity.apply(arrays["identity"], img[None])[0]
            ident = 1.0 - jnp.dot(emb, target.embeddings)
        else:
            ident = zero
        if use["magec"]:
            mg = magec_loss(
                self._ws(latent_LxD),
                arrays["linknet"],
                target.attributes,
                arrays["directions"],
                alpha=self.settings.magec_alpha,
                mode=self.settings.magec_mode,
                loss_kind=self.nets.descriptor.loss,
            )
        else:
            mg = zero
        return jnp.stack([mse, lp, ident, mg]).astype(jnp.float32)

    def _step(self, arrays, state_i: State, target_i: Targets, step, weights_4):
        """One Adam step of one image (no batch axis)."""

        def loss_fn(latent):
            img = self._render(arrays, latent, state_i.noise)
            terms = self._terms(arrays, img, latent, target_i, self.use)
            return jnp.dot(weights_4, terms), terms

        (loss, terms), grad = jax.value_and_grad(loss_fn, has_aux=True)(state_i.latent)
        updates, opt = self._optimizer.update(grad, state_i.opt, state_i.latent)
        ok = jnp.isfinite(loss) & jnp.all(jnp.isfinite(grad)) & ~state_i.failed
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        latent = keep(state_i.latent + updates, state_i.latent)
        opt = jax.tree.map(keep, opt, state_i.opt)
        losses = jnp.concatenate([loss[None], terms])
        return state_i._replace(latent=latent, opt=opt, failed=~ok, losses=losses)

    # ---- batched, jitted entry points --------------------------------------------------------------

    def _prepare_impl(self, arrays, images_BxHxWxC) -> Targets:
        b = images_BxHxWxC.shape[0]
        if self.available["magec"]:
            logits = self.nets.descriptor.apply(arrays["descriptor"], images_BxHxWxC)
            attributes = binarize(logits, self.nets.descriptor.loss)
        else:
            attributes = jnp.zeros((b, 0), jnp.float32)
        if self.available["id"]:
            embeddings = self.nets.identity.apply(arrays["identity"], images_BxHxWxC)
        else:
            embeddings = jnp.zeros((b, 0), jnp.float32)
        images = images_BxHxWxC.astype(jnp.float32)
        features = None
        if self.nets.lpips_target is not None and self.nets.lpips_to_target is not None:
            features = self.nets.lpips_target(arrays["lpips"], images)
        return Targets(images, attributes, embeddings, features)

    def _init_impl(self, arrays, batch: int) -> State:
        rows = 1 if self.settings.latent_space == "w" else self.nets.num_ws
        latent = jnp.broadcast_to(arrays["w_avg"].astype(jnp.float32), (batch, rows, self.nets.w_dim))
        opt = jax.vmap(self._optimizer.init)(latent)
        return State(latent, (), opt, jnp.zeros((batch,), bool), jnp.zeros((batch, 5), jnp.float32))

    def _step_impl(self, arrays, state: State, targets: Targets, step) -> State:
        """One step of every image; ``step`` (an int32 array) picks the loss weights."""
        weights = self._weights[jnp.minimum(step, self._weights.shape[0] - 1)]
        return jax.vmap(self._step, in_axes=(None, 0, 0, None, None))(arrays, state, targets, step, weights)

    def _chunk_impl(self, arrays, state: State, targets: Targets, steps) -> State:
        """The steps numbered by the int32 vector ``steps``, in one ``lax.scan``."""
        body = lambda st, step: (self._step_impl(arrays, st, targets, step), None)  # noqa: E731
        return jax.lax.scan(body, state, steps)[0]

    def _finish_impl(self, arrays, state: State, targets: Targets):
        """Final reconstructions and every available loss term (whatever the weights) of every image."""

        def one(latent, noise, target):
            img = self._render(arrays, latent, noise)
            return img, self._terms(arrays, img, latent, target, self.available)

        images, terms = jax.vmap(one)(state.latent, state.noise, targets)
        ws = jax.vmap(self._ws)(state.latent)
        return ws, images, terms

    # Image2StyleGAN++ noise stage: same structure, the noise maps are the optimised variable.
    def _noise_init_impl(self, arrays, state: State) -> State:
        b = state.latent.shape[0]
        noise = tuple(jnp.broadcast_to(n.astype(jnp.float32), (b, *n.shape)) for n in arrays["noise_init"])
        opt = jax.vmap(self._noise_optimizer.init)(noise)
        return state._replace(noise=noise, opt=opt)

    def _noise_step(self, arrays, state_i: State, target_i: Targets, weights_4):
        use = dict(mse=True, lpips=True, id=False, magec=False)

        def loss_fn(noise):
            img = self._render(arrays, state_i.latent, noise)
            terms = self._terms(arrays, img, state_i.latent, target_i, use)
            return jnp.dot(weights_4, terms), terms

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
        phase = self.settings.noise_phase
        weights = jnp.asarray([phase.mse, phase.lpips, 0.0, 0.0], jnp.float32)
        return jax.vmap(self._noise_step, in_axes=(None, 0, 0, None))(arrays, state, targets, weights)

    def _noise_chunk_impl(self, arrays, state: State, targets: Targets, steps) -> State:
        body = lambda st, step: (self._noise_step_impl(arrays, st, targets, step), None)  # noqa: E731
        return jax.lax.scan(body, state, steps)[0]

    def _term_gradients_impl(self, arrays, latents_BxLxD: jax.Array, targets: Targets) -> tuple[jax.Array, jax.Array]:
        def one(latent, target):
            def terms(lat):
                return self._terms(arrays, self._render(arrays, lat, ()), lat, target, self.available)

            jac_4xLxD = jax.jacrev(terms)(latent)
            return terms(latent), jnp.sqrt(jnp.sum(jnp.square(jac_4xLxD), axis=(1, 2)))

        return jax.vmap(one)(latents_BxLxD, targets)

    def term_gradients(self, latents_BxLxD: jax.Array, images_BxHxWxC: jax.Array) -> tuple[np.ndarray, np.ndarray]:
        """Each loss term and the norm of its gradient in the latent, unweighted, for diagnosing the balance
        of the loss (how much the MAGEC term can steer the latent against the reconstruction terms).

        Args:
          latents_BxLxD: W+ latents (e.g. the ``w`` of finished inversions), rendered with the default noise.
          images_BxHxWxC: their target images in [-1, 1] at G's resolution.

        Returns:
          ``(terms_Bx4, grad_norms_Bx4)`` in the order mse, lpips, id, magec; 0 for a term the networks cannot
          compute. Multiply by a phase's weights to compare what the optimiser sees.
        """
        if not hasattr(self, "_term_gradients"):
            self._term_gradients = _jit_at_precision(self.compute.matmul_precision, self._term_gradients_impl)
        targets = self._prepare(self._arrays, jax.device_put(images_BxHxWxC, self.data_sharding))
        latents = jax.device_put(jnp.asarray(latents_BxLxD, jnp.float32), self.data_sharding)
        terms, norms = self._term_gradients(self._arrays, latents, targets)
        return local_rows(terms), local_rows(norms)

    # ---- host-side driver ---------------------------------------------------------------------------

    def invert(
        self,
        images_BxHxWxC: jax.Array,
        *,
        on_chunk: Callable[[int, int, State], None] | None = None,
    ) -> dict[str, jax.Array]:
        """Inverts one batch (its size a multiple of the mesh size; images already at G's resolution).

        Args:
          images_BxHxWxC: targets in [-1, 1], a global array sharded over ``'data'`` or a host array.
          on_chunk: called as ``on_chunk(steps_done, total_steps, state)`` every ``chunk_steps`` steps, the
            only place where the host looks at device values (for progress).

        Returns:
          dict with ``ws`` ``[B, num_ws, w_dim]``, ``images`` (reconstructions), ``terms`` ``[B, 4]``
          (final mse, lpips, id, magec), ``failed`` ``[B]``, ``noise`` (tuple, empty without noise stage).
        """
        s = self.settings
        images = images_BxHxWxC
        if not isinstance(images, jax.Array) or images.sharding != self.data_sharding:
            images = jax.device_put(images, self.data_sharding)
        targets = self._prepare(self._arrays, images)
        state = self._init(self._arrays, images.shape[0])
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


def _jit_at_precision(precision: str, fn: Callable, **jit_kwargs) -> Callable:
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


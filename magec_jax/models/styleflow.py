"""StyleFlow's conditional CNF prior (Abdal et al., ACM TOG 2021): W+ latents <-> z given lighting and attributes.

The official builder ``cnf(512, '512-512-512-512-512', 17, 1)`` makes ``chain = [MovingBatchNorm1d, CNF,
MovingBatchNorm1d]`` (``num_blocks`` CNFs between ``num_blocks + 1`` BatchNorms). Layer names mirror the
state dict (``chain.0/weight``, ``chain.1/odefunc/diffeq/layers.3/_hyper_gate/kernel``) so that
``ports/styleflow.py`` reads it one-to-one. Every one of the 18 W+ rows is an independent 512-d sample; the
context (9 lighting values, then Gender, Glasses, Yaw, Pitch, Baldness, Beard, Age, Expression) is shared by
the rows of an image::

    forward  (w -> z):  chain.0 -> chain.1 -> chain.2        reverse (z -> w): chain.2 -> chain.1 -> chain.0
    MovingBatchNorm1d (eval: running statistics, eps 1e-4, log-scale weight):
        y = (x - mean) * exp(-0.5 log(var + eps)) * exp(weight) + bias;  logp -= sum(-0.5 log(var + eps) + weight)
    CNF: dy/dt = ODEnet([t, ctx], y) for t in [0, T], T = sqrt_end_time ** 2; d logp/dt = -div
    ODEnet: 6 ConcatSquashLinear, tanh between; ConcatSquashLinear(tc, x) = (x W + b) * sigmoid(tc Wg + bg) + tc Wb

:func:`flow` is the whole prior as one pure function of ``(variables, x_BxLxD, ctx_BxA, ...)``; jit it once per
shape (``functools.partial`` over the keyword options). The modules exist for the variables' layout and for the
ODE function. Computation is float32: the official tolerance 1e-5 is below bfloat16's resolution.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from magec_jax.errors import FileFormatError
from magec_jax.models.cnf import ODESolver, exact_divergence, hutchinson_divergence, integrate
from magec_jax.weights import load_converted

KIND = "styleflow"
Divergence = Literal["hutchinson", "exact", "none"]

ATTRIBUTE_NAMES = ("Gender", "Glasses", "Yaw", "Pitch", "Baldness", "Beard", "Age", "Expression")
NUM_LIGHTING = 9  # context = 9 lighting coefficients, then the 8 attributes
# W+ layers an edit takes from the reverse solve (official UI, main.py); the other layers keep the original w.
EDIT_LAYERS: dict[str, tuple[int, ...]] = {
    "Gender": tuple(range(0, 8)), "Glasses": (2, 3), "Yaw": tuple(range(0, 4)), "Pitch": tuple(range(0, 4)),
    "Baldness": tuple(range(0, 6)), "Beard": tuple(range(5, 10)), "Age": tuple(range(4, 8)),
    "Expression": (4, 5), "light": tuple(range(7, 12)),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class StyleFlowConfig:
    """Architecture of the prior (the official one is the default).

    Attributes:
      w_dim: latent width (512 for StyleGAN2 W).
      context_dim: conditioning values per image (17: 9 lighting + 8 attributes); the ODE net sees 1 + this.
      hidden_dims: ODEnet hidden widths (``'512-512-512-512-512'``).
      num_blocks: CNF blocks (each between two BatchNorms).
      bn_eps: MovingBatchNorm1d's eps.
    """

    w_dim: int = 512
    context_dim: int = 17
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512, 512)
    num_blocks: int = 1
    bn_eps: float = 1e-4

    def __post_init__(self):
        object.__setattr__(self, "hidden_dims", tuple(int(d) for d in self.hidden_dims))
        if min((self.w_dim, self.context_dim, self.num_blocks) + self.hidden_dims) < 1:
            raise ValueError(f"degenerate StyleFlow prior: {self}")

    def to_dict(self) -> dict:
        """JSON-able dict; :func:`config_from_dict` inverts it."""
        return {**dataclasses.asdict(self), "hidden_dims": list(self.hidden_dims)}


def config_from_dict(d: Mapping[str, Any]) -> StyleFlowConfig:
    """A :class:`StyleFlowConfig` from :meth:`StyleFlowConfig.to_dict` output; unknown keys are an error."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(StyleFlowConfig)})
    if unknown:
        raise ValueError(f"unknown StyleFlow config keys {unknown}")
    return StyleFlowConfig(**d)


class ConcatSquashLinear(nn.Module):
    """``(x W + b) * sigmoid(tc Wg + bg) + tc Wb``: gate and shift per image, shared by its rows."""

    features: int

    @nn.compact
    def __call__(self, tc_BxC: jax.Array, x_BxLxI: jax.Array) -> jax.Array:
        h_BxLxO = nn.Dense(self.features, name="_layer")(x_BxLxI)
        gate_BxO = nn.sigmoid(nn.Dense(self.features, name="_hyper_gate")(tc_BxC))
        shift_BxO = nn.Dense(self.features, use_bias=False, name="_hyper_bias")(tc_BxC)
        return h_BxLxO * gate_BxO[:, None, :] + shift_BxO[:, None, :]


class ODEnet(nn.Module):
    """The CNF's dynamics network: ConcatSquashLinear layers ``layers.0..`` with tanh between them."""

    config: StyleFlowConfig

    @nn.compact
    def __call__(self, tc_BxC: jax.Array, y_BxLxD: jax.Array) -> jax.Array:
        widths = self.config.hidden_dims + (self.config.w_dim,)
        h = y_BxLxD
        for i, width in enumerate(widths):
            h = ConcatSquashLinear(width, name=f"layers.{i}")(tc_BxC, h)
            if i < len(widths) - 1:
                h = jnp.tanh(h)
        return h


class ODEfunc(nn.Module):
    """``dy/dt`` at time ``t``: the ODE net on ``tc = [t, ctx]`` (time is column 0)."""

    config: StyleFlowConfig

    @nn.compact
    def __call__(self, t: jax.Array, y_BxLxD: jax.Array, ctx_BxA: jax.Array) -> jax.Array:
        t_Bx1 = jnp.broadcast_to(jnp.asarray(t, y_BxLxD.dtype), (y_BxLxD.shape[0], 1))
        tc_BxC = jnp.concatenate([t_Bx1, ctx_BxA.astype(y_BxLxD.dtype)], axis=1)
        return ODEnet(self.config, name="diffeq")(tc_BxC, y_BxLxD)


class CNF(nn.Module):
    """One CNF block's variables: the learnt ``sqrt_end_time`` (T = its square) and the ODE function.

    Calling it evaluates ``dy/dt`` at ``t``; :func:`flow` integrates it.
    """

    config: StyleFlowConfig

    @nn.compact
    def __call__(self, t: jax.Array, y_BxLxD: jax.Array, ctx_BxA: jax.Array) -> jax.Array:
        self.param("sqrt_end_time", nn.initializers.ones, ())
        return ODEfunc(self.config, name="odefunc")(t, y_BxLxD, ctx_BxA)


class MovingBatchNorm1d(nn.Module):
    """StyleFlow's BatchNorm in eval mode: running statistics, a log-scale ``weight``, and its log-determinant.

    Returns ``(y, logp)``: ``logp`` minus (forward) or plus (reverse) ``sum_d(-0.5 log(var_d + eps) + weight_d)``.
    """

    features: int
    eps: float = 1e-4

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, logp_BxLx1: jax.Array, reverse: bool = False):
        row = (1,) * (x_BxLxD.ndim - 1) + (self.features,)  # [D] -> [1, 1, D]: explicit broadcasting
        weight = self.param("weight", nn.initializers.zeros, (self.features,)).reshape(row)
        bias = self.param("bias", nn.initializers.zeros, (self.features,)).reshape(row)
        mean = self.variable("batch_stats", "running_mean", jnp.zeros, (self.features,)).value.reshape(row)
        var = self.variable("batch_stats", "running_var", jnp.ones, (self.features,)).value.reshape(row)
        half_log_var = 0.5 * jnp.log(var + self.eps)
        logdet_1x1x1 = jnp.sum(-half_log_var + weight, axis=-1, keepdims=True)
        if reverse:
            y = (x_BxLxD - bias) * jnp.exp(-weight)
            return y * jnp.exp(half_log_var) + mean, logp_BxLx1 + logdet_1x1x1
        y = (x_BxLxD - mean) * jnp.exp(-half_log_var)
        return y * jnp.exp(weight) + bias, logp_BxLx1 - logdet_1x1x1


class StyleFlow(nn.Module):
    """The whole chain's variables (``chain.0``, ``chain.1``, ...). Calling it runs every layer once -- each
    BatchNorm forward and each CNF's ``dy/dt`` at t = 0 -- so that ``init`` builds the variables; it returns those
    intermediates by layer name. The flow itself is :func:`flow`."""

    config: StyleFlowConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, ctx_BxA: jax.Array) -> dict[str, jax.Array]:
        cfg = self.config
        logp = jnp.zeros(x_BxLxD.shape[:-1] + (1,), x_BxLxD.dtype)
        out = {}
        for i in range(2 * cfg.num_blocks + 1):
            name = f"chain.{i}"
            if i % 2 == 0:
                x_BxLxD, logp = MovingBatchNorm1d(cfg.w_dim, cfg.bn_eps, name=name)(x_BxLxD, logp)
                out[name] = x_BxLxD
            else:
                out[name] = CNF(cfg, name=name)(jnp.zeros((), x_BxLxD.dtype), x_BxLxD, ctx_BxA)
        return out


class FlowOutput(NamedTuple):
    """What :func:`flow` returns.

    Attributes:
      x_BxLxD: z (forward) or w (reverse).
      logp_BxLx1: the log-density state after the flow (input ``logp`` plus the change), or None when
        ``divergence="none"``.
      num_steps_B: ODE steps (accepted + rejected, all CNF blocks) per image; with one step size for the batch,
        the batch's count for every image.
      nfe_B: vector-field evaluations per image (see :meth:`ODESolver.nfe`).
      input_moments: with ``input_moments=True``: BatchNorm name -> ``(mean_D, var_D)`` of that layer's input
        over the batch and rows (``var`` unbiased, as ``torch.var``), what training's running statistics follow.
    """

    x_BxLxD: jax.Array
    logp_BxLx1: jax.Array | None
    num_steps_B: jax.Array
    nfe_B: jax.Array
    input_moments: dict[str, tuple[jax.Array, jax.Array]] | None = None


def _vector_field(config: StyleFlowConfig, odefunc_variables: dict, divergence: Divergence):
    odefunc = ODEfunc(config)

    def field(t, state, eps_BxLxD):
        y, ctx = state[0], state[-1]  # (y, ctx) or (y, logp, ctx)
        fn = lambda y_: odefunc.apply(odefunc_variables, t, y_, ctx)
        if divergence == "none":
            return fn(y), jnp.zeros_like(ctx)
        if divergence == "hutchinson":
            dy, div = hutchinson_divergence(fn, y, eps_BxLxD)
        else:
            dy, div = exact_divergence(fn, y)
        return dy, -div, jnp.zeros_like(ctx)  # the context is a constant state, as in the official odefunc

    return field


def _pick(reverse: jax.Array, forward: Any, backward: Any) -> Any:
    """``backward`` if ``reverse`` else ``forward``, leaf by leaf (XLA folds the select for a constant flag)."""
    return jax.tree.map(lambda f, b: jnp.where(reverse, b, f), forward, backward)


def _solve_block(config, cnf_params, x, logp, ctx, eps, *, reverse, divergence, solver):
    end_time = cnf_params["sqrt_end_time"] ** 2
    zero = jnp.zeros_like(end_time)
    t0, t1 = _pick(reverse, (zero, end_time), (end_time, zero))
    field = _vector_field(config, {"params": cnf_params["odefunc"]}, divergence)

    def solve(x, logp, ctx, eps):
        state = (x, ctx) if divergence == "none" else (x, logp, ctx)
        out, steps = integrate(field, state, t0, t1, eps, solver)
        return out[0], (None if divergence == "none" else out[1]), steps

    if not solver.per_image:
        x, logp_out, steps = solve(x, logp, ctx, eps)
        return x, logp_out, jnp.broadcast_to(steps, x.shape[:1])

    def one(*image):  # one image as a batch of 1: its own step sizes
        x, logp_out, steps = solve(*jax.tree.map(lambda v: v[None], image))
        return x[0], jax.tree.map(lambda v: v[0], logp_out), steps

    return jax.vmap(one)(x, logp, ctx, eps)


def flow(
    variables: Mapping[str, Any],
    x_BxLxD: jax.Array,
    ctx_BxA: jax.Array,
    logp_BxLx1: jax.Array | None = None,
    eps_BxLxD: jax.Array | None = None,
    reverse: bool | jax.Array = False,
    *,
    config: StyleFlowConfig,
    divergence: Divergence,
    solver: ODESolver = ODESolver(),
    input_moments: bool = False,
) -> FlowOutput:
    """The prior: ``w -> z`` (forward) or ``z -> w`` (``reverse=True``), with the log-density change.

    Args:
      variables: ``{"params": ..., "batch_stats": ...}`` as :func:`load_styleflow` returns them.
      x_BxLxD: W+ latents (forward) or their z (reverse); each of the L rows is one sample.
      ctx_BxA: the context per image: 9 lighting values then the 8 attributes (the UI's ``[B, 17, 1, 1]``
        reshaped to ``[B, 17]``).
      logp_BxLx1: initial log-density (the UI's ``zero_padding``); zeros when None.
      eps_BxLxD: Hutchinson noise for ``divergence="hutchinson"``, fixed for the solve (the official code draws
        ``randn_like`` per solve); ``[K, B, L, D]`` gives each of K CNF blocks its own.
      reverse: direction: a Python bool, or a traced bool scalar so that one compiled function runs both
        directions (the BatchNorms are then computed both ways and selected; one code path for both).
      config: the architecture (static).
      divergence: the log-density change (no default: it changes the solve): ``"hutchinson"`` (the official
        estimator, with ``eps``), ``"exact"`` (the Jacobian's trace; D Jacobian-vector products per evaluation)
        or ``"none"`` (not integrated; an edit needs only z and w'). The official step control also sees the
        log-density, so ``"none"`` takes fewer dopri5 steps at the same tolerance: on the fixture's prior 26
        evaluations instead of 32-38, z 2.1e-4 from the float64 tight-tolerance reference instead of 5e-6 with
        the Hutchinson log-density (the official float32 code: 2.5e-5), and a reverse solve 3.4e-4 from the
        official one (the README's bound for edited w is 1e-3); tighten ``rtol``/``atol`` for more.
      solver: method, tolerances, step control (:class:`magec_jax.models.cnf.ODESolver`; default: the
        official dopri5 at 1e-5, per image).
      input_moments: also return each BatchNorm's input moments (forward only; training uses them).
    """
    batch, rows, width = x_BxLxD.shape
    if width != config.w_dim or ctx_BxA.shape != (batch, config.context_dim):
        raise ValueError(f"StyleFlow expects x [B, L, {config.w_dim}] and ctx [B, {config.context_dim}], got "
                         f"{x_BxLxD.shape} and {ctx_BxA.shape}")
    if (divergence == "hutchinson") != (eps_BxLxD is not None):
        raise ValueError("Hutchinson noise eps is needed exactly when divergence='hutchinson'")
    if eps_BxLxD is not None and eps_BxLxD.ndim == 3:
        eps_BxLxD = jnp.broadcast_to(eps_BxLxD, (config.num_blocks,) + eps_BxLxD.shape)
    logp = jnp.zeros((batch, rows, 1), x_BxLxD.dtype) if logp_BxLx1 is None else logp_BxLx1
    if input_moments and reverse is not False:
        raise ValueError("input_moments is for the forward direction (reverse=False) only")
    reverse = jnp.asarray(reverse, bool)
    moments = {} if input_moments else None
    params, stats = variables["params"], variables["batch_stats"]
    x, steps = x_BxLxD, jnp.zeros((batch,), jnp.int32)
    last = 2 * config.num_blocks
    for k in range(last + 1):  # position k of the chain forward, last - k in reverse
        names = (f"chain.{k}", f"chain.{last - k}")
        if k % 2 == 0:
            if moments is not None:
                rows_NxD = x.reshape(-1, config.w_dim)
                moments[names[0]] = (jnp.mean(rows_NxD, axis=0), jnp.var(rows_NxD, axis=0, ddof=1))
            bn = MovingBatchNorm1d(config.w_dim, config.bn_eps)
            apply = lambda name, rev: bn.apply(
                {"params": params[name], "batch_stats": stats[name]}, x, logp, reverse=rev)
            x, logp = _pick(reverse, apply(names[0], False), apply(names[1], True))
            continue
        cnf_params = params[names[0]] if names[0] == names[1] else _pick(reverse, *(params[n] for n in names))
        block = _pick(reverse, k // 2, (last - k) // 2)
        eps = None if eps_BxLxD is None else eps_BxLxD[block]
        x, logp_cnf, block_steps = _solve_block(config, cnf_params, x, logp, ctx_BxA, eps, reverse=reverse,
                                                divergence=divergence, solver=solver)
        logp = logp if logp_cnf is None else logp_cnf
        steps = steps + block_steps
    nfe = solver.nfe(steps) + (config.num_blocks - 1) * solver.nfe(0)
    return FlowOutput(x, None if divergence == "none" else logp, steps, nfe, moments)


def keep_layers(w_BxLxD: jax.Array, edited_BxLxD: jax.Array, take_L: Any) -> jax.Array:
    """The official edit's layer rule: rows where ``take`` is True come from ``edited``, the others are ``w``
    bit for bit. ``take`` is ``[L]`` or ``[B, L]`` bools, e.g. :func:`edit_layer_mask`."""
    take = jnp.asarray(take_L, bool)
    take = jnp.broadcast_to(take, w_BxLxD.shape[:-1])[..., None]
    return jnp.where(take, edited_BxLxD, w_BxLxD)


def edit_layer_mask(name: str, num_ws: int = 18) -> np.ndarray:
    """``[num_ws]`` bools: the layers an edit of attribute ``name`` (or ``"light"``) takes from the reverse solve."""
    if name not in EDIT_LAYERS:
        raise ValueError(f"no StyleFlow layer rule for {name!r} (one of {', '.join(EDIT_LAYERS)})")
    mask = np.zeros(num_ws, bool)
    mask[list(EDIT_LAYERS[name])] = True
    return mask


def check_latent_width(config: StyleFlowConfig, w_dim: int, *, source: str | os.PathLike) -> None:
    """Raises a one-line :class:`FileFormatError` naming ``source`` when the prior's latent width is not the
    generator's ``w_dim``."""
    if config.w_dim != w_dim:
        raise FileFormatError(
            source, f"StyleFlow prior works on {config.w_dim}-wide latents but the generator's w_dim is {w_dim}"
        )


def load_styleflow(path: str | os.PathLike, *, w_dim: int | None = None) -> tuple[StyleFlowConfig, dict]:
    """Loads a converted prior (``python -m ports.convert model.pt DST``) as ``(config, variables)``; with
    ``w_dim`` (the generator's), a prior of another latent width is a one-line error naming ``path``."""
    converted = load_converted(path, kind=KIND)
    try:
        config = config_from_dict(converted.config)
    except (TypeError, ValueError) as e:
        raise FileFormatError(path, f"bad StyleFlow config in the manifest ({e})") from None
    if w_dim is not None:
        check_latent_width(config, w_dim, source=path)
    return config, jax.tree.map(jnp.asarray, converted.variables)

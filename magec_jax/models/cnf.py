"""Integrating a continuous normalising flow with diffrax: the solvers, the step control and the divergence
estimates that StyleFlow's prior (``models/styleflow.py``) uses, kept apart from the network.

The reference is torchdiffeq 0.2.5 as StyleFlow calls it (``../shared/fixtures/styleflow/README.md``):

* ``dopri5`` (the official solver): diffrax ``Dopri5`` with an integral step controller (``pcoeff=0``,
  ``icoeff=1``, safety 0.9, growth at most 10x, shrink at most 5x; torchdiffeq's step update exponent 1/5, so
  ``error_order=5``), Hairer's initial step, and torchdiffeq's error norm: the largest of the per-state RMS
  values of ``err / (atol + rtol * max(|y0|, |y1|))``. One difference remains, at tolerance level:
  diffrax ends the last step at ``t1`` where torchdiffeq steps past and interpolates.
* fixed grids (``rk4``, ``midpoint``, ``euler``; ``num_steps`` equal steps on ``t0 + (t1 - t0) * k / N``, as
  the fixture's ``grid_constructor`` does). ``rk4`` is torchdiffeq's **3/8-rule** Runge--Kutta, not the
  classic one; diffrax has no RK4, so :class:`RK4ThreeEighths` gives its Butcher tableau.

Step control is per image by default (``batch_step_control=False``): each image is solved as its own state,
batched with ``jax.vmap``, so its result does not depend on what else is in the batch. torchdiffeq controls
one step size for the whole batch; ``batch_step_control=True`` does that (the fixture's batch-of-4 case).
A fixed grid does not depend on batching, so fixed-step methods always integrate the batch as one state.

The divergence of ``dy/dt = f(y)`` for rows that do not interact (every axis but the last indexes an
independent sample): Hutchinson's ``e^T J e`` with given noise (one vector-Jacobian product, as the official
``divergence_approx``) or the exact trace (one Jacobian-vector product per feature, in chunks).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Literal

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

Method = Literal["dopri5", "rk4", "midpoint", "euler"]
METHODS: tuple[str, ...] = ("dopri5", "rk4", "midpoint", "euler")

# torchdiffeq's `rk4` (rk_common._rk4_alt_step_func): k2 at t + h/3 from y + h k1/3, k3 at t + 2h/3 from
# y + h (k2 - k1/3), k4 at t + h from y + h (k1 - k2 + k3); y + h (k1 + 3 k2 + 3 k3 + k4) / 8.
_RK4_38_TABLEAU = diffrax.ButcherTableau(
    c=np.array([1 / 3, 2 / 3, 1.0]),
    b_sol=np.array([1 / 8, 3 / 8, 3 / 8, 1 / 8]),
    # No embedded method belongs to the 3/8 rule; this is the difference to Euler, enough for diffrax's
    # bookkeeping. The solver is meant for fixed grids, where no error estimate is used.
    b_error=np.array([1 / 8 - 1, 3 / 8, 3 / 8, 1 / 8]),
    a_lower=(np.array([1 / 3]), np.array([-1 / 3, 1.0]), np.array([1.0, -1.0, 1.0])),
)


class RK4ThreeEighths(diffrax.AbstractERK):
    """Kutta's 3/8-rule fourth-order Runge--Kutta method (torchdiffeq's ``rk4``), for fixed step sizes."""

    tableau: ClassVar[diffrax.ButcherTableau] = _RK4_38_TABLEAU
    interpolation_cls: ClassVar[Callable[..., Any]] = diffrax.ThirdOrderHermitePolynomialInterpolation.from_k

    def order(self, terms):
        del terms
        return 4


# Function evaluations per step (Dopri5 reuses its last stage as the next step's first) and once per solve
# (Dopri5: Hairer's initial step evaluates f at t0 and at t0 + h0), counted as torchdiffeq's odefunc counts them.
_EVALS_PER_STEP = {"dopri5": 6, "rk4": 4, "midpoint": 2, "euler": 1}
_EVALS_ONCE = {"dopri5": 2, "rk4": 0, "midpoint": 0, "euler": 0}


@dataclasses.dataclass(frozen=True)
class ODESolver:
    """How to integrate: method, tolerances (adaptive) or step count (fixed grid), and step control.

    Attributes:
      method: ``"dopri5"`` (adaptive; the official setting) or a fixed-grid ``"rk4"`` (3/8 rule),
        ``"midpoint"`` or ``"euler"``.
      num_steps: equal steps over ``[t0, t1]`` for the fixed-grid methods (ignored by ``dopri5``).
      rtol, atol: ``dopri5``'s tolerances (official: 1e-5 both).
      max_steps: ``dopri5``'s bound on accepted + rejected steps; reaching it is an error.
      batch_step_control: ``dopri5`` only: one step size for the whole batch (torchdiffeq's behaviour)
        instead of one per image (the default; results independent of the batch).
    """

    method: Method = "dopri5"
    num_steps: int = 0
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 1000
    batch_step_control: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown ODE method {self.method!r} (one of {', '.join(METHODS)})")
        if not self.adaptive and self.num_steps < 1:
            raise ValueError(f"the fixed-grid method {self.method!r} needs num_steps >= 1")
        if self.adaptive and not (self.rtol > 0 and self.atol > 0 and self.max_steps > 0):
            raise ValueError(f"dopri5 needs positive rtol, atol and max_steps, got {self}")

    @property
    def adaptive(self) -> bool:
        """Whether the step size is chosen by error control (``dopri5``)."""
        return self.method == "dopri5"

    @property
    def per_image(self) -> bool:
        """Whether each image is integrated as its own state (vmapped): adaptive and not batch-controlled."""
        return self.adaptive and not self.batch_step_control

    def nfe(self, num_steps: jax.Array) -> jax.Array:
        """Vector-field evaluations of a solve that took ``num_steps`` steps (accepted + rejected), by the official
        counter's rule: ``2 + 6 * steps`` for dopri5 (the fixture's NFE), ``stages * steps`` on a fixed grid.

        The algorithm diffrax runs asks for one more (its Dopri5 evaluates ``f(t0)`` for the first stage after the
        initial-step rule did); a host callback placed in the vector field fired ``1 + 6 * steps`` times in a
        compiled solve (diffrax 0.7.2, jax 0.10.2 CPU), so the compiled count can be lower than the rule's.
        """
        return _EVALS_ONCE[self.method] + _EVALS_PER_STEP[self.method] * num_steps


def max_rms_norm(tree: Any) -> jax.Array:
    """torchdiffeq's norm of a tuple state: the largest of the leaves' root-mean-square values."""
    leaves = jax.tree.leaves(tree)
    return jnp.max(jnp.stack([jnp.sqrt(jnp.mean(jnp.square(leaf))) for leaf in leaves]))


def _diffrax_solver(method: str) -> diffrax.AbstractSolver:
    return {"dopri5": diffrax.Dopri5, "rk4": RK4ThreeEighths, "midpoint": diffrax.Midpoint,
            "euler": diffrax.Euler}[method]()


def integrate(vector_field: Callable, y0: Any, t0: jax.Array, t1: jax.Array, args: Any,
              solver: ODESolver) -> tuple[Any, jax.Array]:
    """Integrates ``dy/dt = vector_field(t, y, args)`` from ``t0`` to ``t1`` (``t1 < t0`` runs backwards).

    One state, whatever its batch: the caller vmaps for per-image step control. ``t0`` and ``t1`` may be traced
    (StyleFlow's end time is a parameter; both directions share one compiled solve).

    Returns:
      ``(y(t1), steps)``: the state at ``t1`` and the number of steps taken (accepted + rejected), int32.
    """
    t0 = jnp.asarray(t0, jnp.float32)
    t1 = jnp.asarray(t1, jnp.float32)
    if solver.adaptive:
        controller = diffrax.PIDController(
            rtol=solver.rtol, atol=solver.atol, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, safety=0.9,
            factormin=0.2, factormax=10.0, norm=max_rms_norm, error_order=5,
        )
        max_steps = solver.max_steps
    else:
        n = solver.num_steps
        controller = diffrax.StepTo(ts=t0 + (t1 - t0) * (jnp.arange(n + 1, dtype=jnp.float32) / n))
        max_steps = n
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), _diffrax_solver(solver.method), t0, t1, None, y0, args=args,
        stepsize_controller=controller, saveat=diffrax.SaveAt(t1=True), max_steps=max_steps,
    )
    y1 = jax.tree.map(lambda a: a[0], sol.ys)
    return y1, jnp.asarray(sol.stats["num_steps"], jnp.int32)


def hutchinson_divergence(fn: Callable[[jax.Array], jax.Array], y: jax.Array,
                          eps: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(fn(y), e^T J e)`` per row, ``J = d fn / d y`` of that row: one vector-Jacobian product.

    Rows (all axes but the last) must not interact in ``fn``; the estimate has shape ``y.shape[:-1] + (1,)``.
    """
    dy, pullback = jax.vjp(fn, y)
    (eps_j,) = pullback(eps)
    return dy, jnp.sum(eps_j * eps, axis=-1, keepdims=True)


def exact_divergence(fn: Callable[[jax.Array], jax.Array], y: jax.Array,
                     chunk: int = 64) -> tuple[jax.Array, jax.Array]:
    """``(fn(y), trace J)`` per row, from one Jacobian-vector product per feature d (the one-hot e_d on every
    row at once: rows do not interact), ``chunk`` features at a time."""
    dim = y.shape[-1]

    def diagonal(d):
        e = jnp.broadcast_to(jax.nn.one_hot(d, dim, dtype=y.dtype), y.shape)
        return jnp.sum(jax.jvp(fn, (y,), (e,))[1] * e, axis=-1)

    diag_DxR = jax.lax.map(diagonal, jnp.arange(dim), batch_size=min(chunk, dim))
    return fn(y), jnp.sum(diag_DxR, axis=0)[..., None]

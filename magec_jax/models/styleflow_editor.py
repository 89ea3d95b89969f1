"""A StyleFlow prior with its context described, ready to edit: StyleFlow's editing rule on W+ latents.

The editing rule is StyleFlow's (its UI, ``main.py`` and ``ui/real_time_attr_thread.py``): the image's latent is
solved forward once, ``z = flow(w | c)``, with ``c`` the image's context; an edit sets attribute values in a copy
of ``c``, solves back from the stored ``z`` with it, ``w_rev = flow^-1(z | c')``, and takes from ``w_rev`` only
the layers of the attribute's rule, keeping the current latent's other layers. Edits made one after another
(several attributes, as the UI's sliders allow) accumulate: each reverse solve starts from the same ``z`` with
every change so far, and replaces its attribute's layers of the latent the previous edits left.

A prior is described by :class:`StyleFlowEditor` (:func:`load_editor` reads one):
  * the official prior (converted by ``ports.convert``): context = 9 lighting values (``light_0..light_8``) and
    Gender, Glasses, Yaw, Pitch, Baldness, Beard, Age, Expression as the official code gives them (no
    standardisation); the official per-attribute layer rule for 18-layer generators;
  * a prior trained here (``python -m magec_jax.styleflow``): its ``extra.editing`` entry (the context's names,
    their training mean and standard deviation, the range seen in training, the layer rule, and which
    descriptor F gave the context).

Where an image's context comes from (F on its reconstruction, a file, or maximum likelihood) is decided by the
tools: ``magec_jax.editing.styleflow``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from magec_jax.errors import FileFormatError, MagecError
from magec_jax.models import styleflow as sf
from magec_jax.models.cnf import ODESolver
from magec_jax.weights import load_converted

OFFICIAL_CONTEXT = tuple(f"light_{i}" for i in range(sf.NUM_LIGHTING)) + sf.ATTRIBUTE_NAMES
Change = tuple[str, Any]  # (context name, value: a float, or one per image)


@dataclasses.dataclass(frozen=True)
class StyleFlowEditor:
    """A prior ready to edit latents of one generator.

    Attributes:
      config, variables: the prior (:func:`magec_jax.models.styleflow.load_styleflow`).
      context_names: the context's values in order; ``editable`` are those a user may set.
      mean, std: ``[M]``: the prior sees ``(c - mean) / std`` (0 and 1 for the official prior).
      low, high: ``[M]``, the range of each value in the prior's training data, or None when unknown.
      edit_layers: attribute -> the W+ rows an edit of it takes from the reverse solve.
      context_source: the label-source description of the descriptor F whose outputs the context is, or None.
      source: the prior's folder (messages).
      solver: how edits integrate (default: the official dopri5 at 1e-5, each image its own steps).
    """

    config: sf.StyleFlowConfig
    variables: Any
    context_names: tuple[str, ...]
    editable: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray | None
    high: np.ndarray | None
    edit_layers: Mapping[str, tuple[int, ...]]
    context_source: dict | None
    source: str
    solver: ODESolver = ODESolver()

    # ---- checks ----

    def check_changes(self, changes: Sequence[Change], num_ws: int) -> list[str]:
        """Raises a one-line :class:`MagecError` for an attribute the prior does not know (listing those it
        does) or one without a layer rule for a ``num_ws``-layer latent; returns a warning line for each value
        outside the range seen in training."""
        warnings = []
        for name, value in changes:
            if name not in self.editable:
                raise MagecError(f"{self.source}: no StyleFlow attribute {name!r} (valid: {', '.join(self.editable)})")
            rows = self.edit_layers.get(name)
            if rows is None or max(rows) >= num_ws:
                raise MagecError(f"{self.source}: no layer rule for {name!r} on a {num_ws}-layer latent")
            i = self.context_names.index(name)
            if self.low is not None and not self.low[i] <= value <= self.high[i]:
                warnings.append(f"warning: StyleFlow {name}={value:g} is outside the range seen in training "
                                f"[{self.low[i]:.3g}, {self.high[i]:.3g}]; the edit extrapolates")
        return warnings

    # ---- solves ----

    @functools.cached_property
    def _flow(self) -> Callable:
        return jax.jit(functools.partial(sf.flow, config=self.config, divergence="none", solver=self.solver))

    def _normalise(self, ctx_BxM: np.ndarray) -> jax.Array:
        return jnp.asarray((np.asarray(ctx_BxM, np.float64) - self.mean) / self.std, jnp.float32)

    def encode(self, ws_BxLxD: np.ndarray, ctx_BxM: np.ndarray) -> np.ndarray:
        """``z`` of latents ``[B, L, D]`` given their raw contexts ``[B, M]``."""
        out = self._flow(self.variables, jnp.asarray(ws_BxLxD, jnp.float32), self._normalise(ctx_BxM), None, None,
                         jnp.asarray(False))
        return np.asarray(out.x_BxLxD)

    def decode(self, z_BxLxD: np.ndarray, ctx_BxM: np.ndarray) -> np.ndarray:
        """The latents whose ``z`` is ``z_BxLxD`` under raw contexts ``[B, M]`` (the reverse solve)."""
        out = self._flow(self.variables, jnp.asarray(z_BxLxD, jnp.float32), self._normalise(ctx_BxM), None, None,
                         jnp.asarray(True))
        return np.asarray(out.x_BxLxD)

    def edit_sequence(self, ws_BxLxD: np.ndarray, ctx_BxM: np.ndarray, changes: Sequence[Change]) -> np.ndarray:
        """The latents after each of ``changes`` made one after another: ``[K, B, L, D]`` for K changes
        (StyleFlow's rule: one forward solve, then a reverse solve per change from the stored z). A change's
        value is one number, or one per image ``[B]``."""
        ws = np.asarray(ws_BxLxD, np.float32)
        target = np.array(ctx_BxM, np.float64)
        z = self.encode(ws, target)
        current, out = ws, []
        for name, value in changes:
            target[:, self.context_names.index(name)] = value
            rows = np.zeros(ws.shape[1], bool)
            rows[list(self.edit_layers[name])] = True
            current = np.asarray(sf.keep_layers(jnp.asarray(current), jnp.asarray(self.decode(z, target)), rows))
            out.append(current)
        return np.stack(out)

    def estimate(self, ws_BxLxD: np.ndarray, *, steps: int = 100, learning_rate: float = 0.1, probes: int = 8,
                 solver: ODESolver = ODESolver("rk4", num_steps=8), seed: int = 0) -> np.ndarray:
        """Raw contexts ``[B, M]`` that maximise the prior's likelihood of each latent: Adam on the standardised
        context from the training mean (0). The log-density is Hutchinson's estimate averaged over ``probes``
        fixed Gaussian probes (the same probes at every step, so the objective is deterministic; 0: the exact
        divergence, ``w_dim`` Jacobian-vector products per evaluation), integrated on ``solver``'s grid (a
        fixed RK4 grid by default: the priors here take about 5 dopri5 steps at 1e-5, and a fixed grid
        differentiates at a fixed cost). The official prior's lighting values are estimated with its
        attributes."""
        num_p = max(probes, 1)
        flow = functools.partial(sf.flow, config=self.config, divergence="hutchinson" if probes else "exact",
                                 solver=solver)

        def nll(c_BxM, w_BxLxD, eps):
            w = jnp.tile(w_BxLxD, (num_p, 1, 1))  # probe p of image b at row p * B + b
            out = flow(self.variables, w, jnp.tile(c_BxM, (num_p, 1)), None, eps)
            logpz = jnp.sum(-0.5 * jnp.square(out.x_BxLxD) - 0.5 * jnp.log(2 * jnp.pi), axis=(1, 2))
            return jnp.sum(-(logpz - jnp.sum(out.logp_BxLx1, axis=(1, 2)))) / num_p

        optimizer = optax.adam(learning_rate)

        @jax.jit
        def fit(w):
            c = jnp.zeros((w.shape[0], self.config.context_dim), jnp.float32)
            shape = (self.config.num_blocks, num_p * w.shape[0]) + w.shape[1:]
            eps = jax.random.normal(jax.random.key(seed), shape, w.dtype) if probes else None

            def step(carry, _):
                c, state = carry
                grads = jax.grad(nll)(c, w, eps)
                updates, state = optimizer.update(grads, state, c)
                return (optax.apply_updates(c, updates), state), None

            (c, _), _ = jax.lax.scan(step, (c, optimizer.init(c)), None, length=steps)
            return c

        c = np.asarray(fit(jnp.asarray(ws_BxLxD, jnp.float32)), np.float64)
        return c * self.std + self.mean


def load_editor(path: str | os.PathLike, *, w_dim: int, num_ws: int, solver: ODESolver = ODESolver()) -> StyleFlowEditor:
    """A prior from its converted folder, checked against the generator's latent (one-line errors naming it)."""
    path = Path(path)
    config, variables = sf.load_styleflow(path, w_dim=w_dim)
    extra = load_converted(path, kind=sf.KIND).manifest.get("extra", {}) or {}
    editing = extra.get("editing")
    if editing is None:
        if config.context_dim != len(OFFICIAL_CONTEXT):
            raise FileFormatError(path, f"a prior with {config.context_dim} context values and no 'editing' entry: "
                                  f"only the official {len(OFFICIAL_CONTEXT)}-value context is known without one")
        m = len(OFFICIAL_CONTEXT)
        layers = {k: v for k, v in sf.EDIT_LAYERS.items() if k in sf.ATTRIBUTE_NAMES} if num_ws == 18 else {}
        return StyleFlowEditor(config, variables, OFFICIAL_CONTEXT, sf.ATTRIBUTE_NAMES, np.zeros(m), np.ones(m),
                               None, None, layers, None, str(path), solver)
    try:
        names = tuple(editing["context_names"])
        arrays = {k: np.asarray(editing[k], np.float64) for k in ("context_mean", "context_std")}
        low = np.asarray(editing["context_min"], np.float64) if editing.get("context_min") is not None else None
        high = np.asarray(editing["context_max"], np.float64) if editing.get("context_max") is not None else None
        layers = {str(k): tuple(int(r) for r in v) for k, v in editing["edit_layers"].items()}
    except (KeyError, TypeError, ValueError) as e:
        raise FileFormatError(path, f"bad 'editing' entry in the manifest ({e.__class__.__name__}: {e})") from None
    if len(names) != config.context_dim or any(a.shape != (len(names),) for a in arrays.values()) \
            or not np.all(arrays["context_std"] > 0):
        raise FileFormatError(path, f"the 'editing' entry does not describe the prior's {config.context_dim} "
                              "context values (names, means, positive standard deviations)")
    return StyleFlowEditor(config, variables, names, names, arrays["context_mean"], arrays["context_std"], low, high,
                           layers, editing.get("context_source"), str(path), solver)

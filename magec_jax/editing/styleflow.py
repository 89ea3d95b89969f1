"""StyleFlow edits of W+ latents: the official prior or one a bundle trained (``python -m magec_jax.styleflow``).

The editing rule is StyleFlow's (its UI, ``main.py`` and ``ui/real_time_attr_thread.py``): the image's latent is
solved forward once, ``z = flow(w | c)``, with ``c`` the image's context; an edit sets attribute values in a copy
of ``c``, solves back from the stored ``z`` with it, ``w_rev = flow^-1(z | c')``, and takes from ``w_rev`` only
the layers of the attribute's rule, keeping the current latent's other layers. Edits made one after another
(several attributes, as the UI's sliders allow) accumulate: each reverse solve starts from the same ``z`` with
every change so far, and replaces its attribute's layers of the latent the previous edits left.

A prior is described by :class:`StyleFlowEditor`:
  * the official prior (converted by ``ports.convert``): context = 9 lighting values (``light_0..light_8``) and
    Gender, Glasses, Yaw, Pitch, Baldness, Beard, Age, Expression as the official code gives them (no
    standardisation); the official per-attribute layer rule for 18-layer generators;
  * a prior trained here: its ``extra.editing`` entry (the context's names, their training mean and standard
    deviation, the range seen in training, the layer rule, and which descriptor F gave the context).

A real image's context comes from F run on its reconstruction ``G(w)`` when the prior was trained on that F's
outputs (the samples it learnt from were ``(w, F(G(w)))``; ``magec_jax.supervision.styleflow.descriptor_context_fn``),
from the user (:func:`read_context_file`), or by maximising the prior's likelihood of the latent over the
context (:meth:`StyleFlowEditor.estimate`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
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

    def estimate(self, ws_BxLxD: np.ndarray, *, steps: int = 100, learning_rate: float = 0.1) -> np.ndarray:
        """Raw contexts ``[B, M]`` that maximise the prior's likelihood of each latent: Adam on the standardised
        context from the training mean (0), the log-likelihood with the exact divergence. The official prior's
        lighting values are estimated with its attributes."""
        flow = functools.partial(sf.flow, config=self.config, divergence="exact", solver=self.solver)

        def nll(c_BxM, w):
            out = flow(self.variables, w, c_BxM)
            logpz = jnp.sum(-0.5 * jnp.square(out.x_BxLxD) - 0.5 * jnp.log(2 * jnp.pi), axis=(1, 2))
            return jnp.sum(-(logpz - jnp.sum(out.logp_BxLx1, axis=(1, 2))))

        optimizer = optax.adam(learning_rate)

        @jax.jit
        def fit(w):
            c = jnp.zeros((w.shape[0], self.config.context_dim), jnp.float32)

            def step(carry, _):
                c, state = carry
                grads = jax.grad(nll)(c, w)
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


def bundle_editor(bundle: Any, path: str | os.PathLike | None = None, solver: ODESolver = ODESolver()) -> StyleFlowEditor:
    """The prior at ``path``, else the bundle's ``styleflow`` entry, for the bundle's generator."""
    if path is None:
        rel = bundle.manifest.get("styleflow")
        if not rel:
            raise MagecError(f"{bundle.path}: the bundle has no StyleFlow prior; train one (python -m "
                             "magec_jax.styleflow) or give a converted prior")
        path = bundle.part(rel)
    cfg = bundle.generator[0]
    return load_editor(path, w_dim=cfg.w_dim, num_ws=cfg.num_ws, solver=solver)


def parse_changes(text: str) -> tuple[Change, ...]:
    """``"Age=50,Gender=1"`` -> ``(("Age", 50.0), ("Gender", 1.0))``; a one-line :class:`MagecError` otherwise."""
    changes = []
    for part in (p.strip() for p in text.split(",")):
        name, sep, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name.strip() or number is None or not np.isfinite(number):
            raise MagecError(f"--styleflow: expected ATTR=VALUE[,ATTR=VALUE...], got {text!r}")
        changes.append((name.strip(), number))
    return tuple(changes)


def read_context_file(path: str | os.PathLike, editor: StyleFlowEditor, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Contexts from a JSON file ``{latent name: {context name: value}}``: raw ``[M]`` per latent in ``names``.

    Raises:
      FileFormatError: unreadable, not that layout, a latent of ``names`` missing, or a value missing.
    """
    path = Path(path)
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FileFormatError(path, f"unreadable attribute file ({e.__class__.__name__})") from None
    if not isinstance(table, dict):
        raise FileFormatError(path, "expected {latent name: {attribute: value}}")
    out = {}
    for name in names:
        entry = table.get(name)
        if not isinstance(entry, dict):
            raise FileFormatError(path, f"no attributes for {name!r}")
        missing = [k for k in editor.context_names if not isinstance(entry.get(k), (int, float))]
        if missing:
            raise FileFormatError(path, f"{name!r} lacks a number for {missing[0]!r} (needs {', '.join(editor.context_names)})")
        out[name] = np.asarray([entry[k] for k in editor.context_names], np.float64)
    return out

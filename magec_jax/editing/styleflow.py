"""StyleFlow edits for the tools: the bundle's prior, the ``--styleflow`` syntax, and images' contexts from a file.

The prior and its editing rule are :mod:`magec_jax.models.styleflow_editor`. A real image's context comes from F
run on its reconstruction ``G(w)`` when the prior was trained on that F's outputs (the samples it learnt from
were ``(w, F(G(w)))``; ``magec_jax.supervision.styleflow.descriptor_context_fn``), from the user
(:func:`read_context_file`), or by maximising the prior's likelihood of the latent over the context
(:meth:`~magec_jax.models.styleflow_editor.StyleFlowEditor.estimate`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from magec_jax.errors import FileFormatError, MagecError
from magec_jax.models.cnf import ODESolver
from magec_jax.models.styleflow_editor import Change, StyleFlowEditor, load_editor

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

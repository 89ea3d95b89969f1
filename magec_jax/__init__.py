"""magec_jax: MAGEC GAN inversion for realistic editing, in JAX/Flax.

Data flow, one way: foreign weights (``ports/``) -> converted weights (``magec_jax.weights``) -> networks
(``magec_jax.models``; faces in photographs: ``magec_jax.faces``) -> loss terms and the inversion engine
(``magec_jax.inversion``) -> model bundles (``magec_jax.bundle``) -> the batch job, edits and metrics
(``magec_jax.inversion.job``, ``magec_jax.editing``, ``magec_jax.evaluation``) and the command-line tools.

The names a researcher needs from a notebook are exported here (imported on first use, so that importing one
model file stays light):

* :func:`load_bundle` -- a model bundle; ``.networks()`` gives the engine's :class:`Networks`;
* :func:`protocol_settings` -- a paper protocol as typed :class:`InversionSettings` (phases of :class:`Phase`);
* :class:`Engine` -- the compiled, vmapped, sharded inversion of image batches; :func:`invert_arrays` -- images
  in memory -> latents, reconstructions and final loss terms;
* :func:`tune_arrays` -- pivotal tuning of images around their latents (pivots): per image a weight delta of the
  generator (full or low-rank, :class:`PTISettings`); :class:`Tuner` is its compiled, vmapped, sharded engine;
* :func:`register_term`, :class:`LossTerm`, :class:`TermInputs` -- add a loss term that phases weight by name;
  :func:`magec_term` builds the MAGEC term with another latent classifier or edit set;
* :func:`magec_loss` -- the vectorised MAGEC loss of one latent, on its own.

``docs/python_api.md`` shows each in use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_bundle": "magec_jax.bundle",
    "Bundle": "magec_jax.bundle",
    "Networks": "magec_jax.inversion.networks",
    "InversionSettings": "magec_jax.inversion.settings",
    "Phase": "magec_jax.inversion.settings",
    "NoisePhase": "magec_jax.inversion.settings",
    "ComputeOptions": "magec_jax.inversion.settings",
    "protocol_settings": "magec_jax.inversion.protocols",
    "Engine": "magec_jax.inversion.engine",
    "invert_arrays": "magec_jax.inversion.engine",
    "PTISettings": "magec_jax.inversion.pti",
    "Tuner": "magec_jax.inversion.pti",
    "tune_arrays": "magec_jax.inversion.pti",
    "LossTerm": "magec_jax.inversion.terms",
    "TermInputs": "magec_jax.inversion.terms",
    "register_term": "magec_jax.inversion.terms",
    "magec_term": "magec_jax.inversion.terms",
    "magec_loss": "magec_jax.inversion.magec_loss",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'magec_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

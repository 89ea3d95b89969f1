"""Per-image weight deltas of a StyleGAN2 synthesis network: what pivotal tuning learns and stores.

A delta changes some synthesis parameters of ONE generator, ``param' = param + delta``, leaving the stored
generator untouched, so a batch of images can each carry their own tuned generator (vmapped) and an image
costs its delta on disk instead of a generator copy. Two kinds (:class:`DeltaSpec`):

* ``"full"``: one array per tuned parameter, of the parameter's shape (PTI's full fine-tuning; Adam on the
  delta from zero is Adam on the weights, step for step);
* ``"lowrank"``: each tuned matrix gets ``A @ B`` of rank ``rank`` (LoRA's factorisation): a 3x3 or 1x1
  kernel ``[kh, kw, I, O]`` as ``(A [kh*kw*I, r] @ B [r, O]).reshape(kh, kw, I, O)``, an affine (style)
  weight ``[D, I]`` as ``A [D, r] @ B [r, I]``; vectors (biases, the 4x4 constant, noise strengths) have no
  low-rank form and get a full delta when their group is tuned. ``B`` starts at zero (the tuned generator
  starts as the original) and ``A`` at N(0, 1/r), the same draw for every image (an image tuned alone equals
  the same image tuned in a batch).

Which parameters are tuned is a set of *groups* (:data:`GROUPS`): ``conv`` (the 3x3 modulated kernels),
``torgb`` (the 1x1 ToRGB kernels), ``affine`` (the style affines' weights), ``bias`` (every bias, the affines'
included), ``const`` (the 4x4 input) and ``noise_strength``.

File format (``<name>.npz``, written by :func:`save_delta`; numpy alone reads it, no pickle): one array per
entry, named by the parameter's path in the converted generator (``synthesis/b64/conv1/weight``; this
project's layout, kernels HWIO, NVIDIA's ``[O, I, kh, kw]`` is ``transpose(3, 2, 0, 1)``), either the full delta
(same shape as the parameter) or the two factors ``<path>.a`` and ``<path>.b``; and ``meta``, a JSON string:
``format`` ("magec-weight-delta"), ``format_version``, ``kind``, ``rank``, ``groups``, ``generator`` (the
:func:`generator_fingerprint` and the architecture it was tuned for) and the rule, in words. To apply it
without this project: for each entry add it (or ``(a @ b).reshape(shape)``) to the parameter of that name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from magec_jax import images as imio
from magec_jax.errors import FileFormatError
from magec_jax.models.stylegan2 import FROZEN, StyleGAN2Config

FORMAT_NAME = "magec-weight-delta"
FORMAT_VERSION = 1
GROUPS = ("conv", "torgb", "affine", "bias", "const", "noise_strength")
DeltaKind = Literal["full", "lowrank"]
_SEP = "/"
_PREFIX = "synthesis"


@dataclasses.dataclass(frozen=True)
class DeltaSpec:
    """Which synthesis parameters a tuning changes, and how.

    Attributes:
      kind: ``"full"`` (a delta per parameter) or ``"lowrank"`` (``A @ B`` per matrix).
      rank: the rank of each low-rank matrix (ignored for ``"full"``).
      groups: the tuned parameter groups (:data:`GROUPS`); PTI tunes every synthesis parameter.
    """

    kind: DeltaKind = "full"
    rank: int = 4
    groups: tuple[str, ...] = GROUPS

    def __post_init__(self):
        if self.kind not in ("full", "lowrank"):
            raise ValueError(f"delta kind must be 'full' or 'lowrank', got {self.kind!r}")
        if self.rank < 1:
            raise ValueError(f"rank must be a positive integer, got {self.rank}")
        unknown = sorted(set(self.groups) - set(GROUPS))
        if unknown or not self.groups:
            raise ValueError(f"groups must be a non-empty subset of {GROUPS}, got {self.groups}")

    def to_dict(self) -> dict:
        return dict(kind=self.kind, rank=self.rank if self.kind == "lowrank" else None, groups=list(self.groups))


def parameter_group(path: str) -> str | None:
    """The group of a synthesis parameter path (``b8/conv0/weight`` -> ``conv``), or None."""
    parts = path.split(_SEP)
    leaf = parts[-1]
    if leaf == "const":
        return "const"
    if leaf == "noise_strength":
        return "noise_strength"
    if leaf == "bias":
        return "bias"
    if leaf == "weight":
        if parts[-2] == "affine":
            return "affine"
        return "torgb" if parts[-2] == "torgb" else "conv"
    return None


def _synthesis_params(variables: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.flatten_dict(dict(variables["params"][_PREFIX]), sep=_SEP)


def _is_lowrank(spec: DeltaSpec, value: Any) -> bool:
    return spec.kind == "lowrank" and np.ndim(value) >= 2


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The 2-D view a low-rank factorisation works on: all axes but the last against the last."""
    return math.prod(shape[:-1]), shape[-1]


def tuned_parameters(variables: Mapping[str, Any], spec: DeltaSpec) -> dict[str, tuple[int, ...]]:
    """``{synthesis path: shape}`` of the parameters ``spec`` tunes, in sorted order."""
    params = _synthesis_params(variables)
    return {name: tuple(np.shape(value)) for name, value in sorted(params.items())
            if parameter_group(name) in spec.groups}


def init_delta(variables: Mapping[str, Any], spec: DeltaSpec, key: jax.Array) -> dict[str, Any]:
    """The zero delta of one image: ``{path: array}`` for full deltas, ``{path: {"a": A, "b": B}}`` for low-rank
    matrices (``B = 0``, ``A ~ N(0, 1/rank)`` from ``key``, one fold per parameter)."""
    delta: dict[str, Any] = {}
    for i, (name, shape) in enumerate(tuned_parameters(variables, spec).items()):
        if spec.kind == "lowrank" and len(shape) >= 2:
            rows, cols = _matrix_shape(shape)
            a = jax.random.normal(jax.random.fold_in(key, i), (rows, spec.rank), jnp.float32) / math.sqrt(spec.rank)
            delta[name] = {"a": a, "b": jnp.zeros((spec.rank, cols), jnp.float32)}
        else:
            delta[name] = jnp.zeros(shape, jnp.float32)
    return delta


def materialize(delta_entry: Any, shape: tuple[int, ...]) -> jax.Array:
    """One parameter's delta as an array of its shape."""
    if isinstance(delta_entry, Mapping):
        return (delta_entry["a"] @ delta_entry["b"]).reshape(shape)
    return delta_entry


def apply_delta(variables: Mapping[str, Any], delta: Mapping[str, Any]) -> dict:
    """The generator's variables with ``delta`` added to its synthesis parameters (traceable; works on one
    image's delta, vmap it for a batch). Precomputed kernels (``stylegan2.freeze_synthesis``) are dropped:
    they would ignore the delta."""
    params = _synthesis_params(variables)
    missing = sorted(set(delta) - set(params))
    if missing:
        raise ValueError(f"the delta changes parameters the generator lacks: {', '.join(missing[:3])}")
    tuned = {name: value + materialize(delta[name], value.shape).astype(value.dtype) if name in delta else value
             for name, value in params.items()}
    out = {k: v for k, v in variables.items() if k != FROZEN}
    out["params"] = {**variables["params"], _PREFIX: traverse_util.unflatten_dict(tuned, sep=_SEP)}
    return out


def delta_bytes(delta: Mapping[str, Any]) -> int:
    """The bytes of one image's delta as stored (float32)."""
    return sum(int(np.prod(np.shape(leaf))) * 4 for leaf in jax.tree.leaves(delta))


# ---- the generator a delta belongs to -------------------------------------------------------------------------


def generator_fingerprint(variables: Mapping[str, Any]) -> str:
    """A short hash of the synthesis parameters (names, shapes, float32 values): a delta applies to the
    generator with the same fingerprint only."""
    digest = hashlib.sha256()
    for name, value in sorted(_synthesis_params(variables).items()):
        array = np.ascontiguousarray(np.asarray(value, np.float32))
        digest.update(f"{name}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def generator_record(cfg: StyleGAN2Config, variables: Mapping[str, Any], source: str = "") -> dict:
    """What a delta records of its generator: the fingerprint, the architecture and where it came from."""
    return dict(fingerprint=generator_fingerprint(variables), resolution=cfg.img_resolution, num_ws=cfg.num_ws,
                w_dim=cfg.w_dim, channel_base=cfg.channel_base, channel_max=cfg.channel_max, source=source)


# ---- files ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StoredDelta:
    """A delta read from disk: its arrays (numpy), its spec and its generator record."""

    path: Path
    delta: dict[str, Any]
    spec: DeltaSpec
    generator: dict
    meta: dict


def save_delta(path: str | Path, delta: Mapping[str, Any], spec: DeltaSpec, generator: Mapping[str, Any],
               **extra: Any) -> Path:
    """Writes one image's delta (atomically) in the documented format; ``extra`` goes into ``meta``."""
    arrays: dict[str, np.ndarray] = {}
    for name, entry in delta.items():
        if isinstance(entry, Mapping):
            arrays[f"{_PREFIX}/{name}.a"] = np.asarray(entry["a"], np.float32)
            arrays[f"{_PREFIX}/{name}.b"] = np.asarray(entry["b"], np.float32)
        else:
            arrays[f"{_PREFIX}/{name}"] = np.asarray(entry, np.float32)
    rule = ("param' = param + delta[name]; a low-rank entry is name.a [m, r] and name.b [r, n]: "
            "delta = (a @ b).reshape(param.shape)")
    meta = dict(format=FORMAT_NAME, format_version=FORMAT_VERSION, **spec.to_dict(), generator=dict(generator),
                rule=rule, **extra)
    return imio.atomic_save_npz(path, meta=np.asarray(json.dumps(meta, default=str)), **arrays)


def load_delta(path: str | Path) -> StoredDelta:
    """Reads a delta file (no pickle); a file of another format is one line naming it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise FileFormatError(path, "no such weight delta") from None
    except (OSError, ValueError, EOFError) as e:
        raise FileFormatError(path, f"not a readable weight delta ({e})") from None
    try:
        meta = json.loads(str(arrays.pop("meta")))
        if meta.get("format") != FORMAT_NAME:
            raise ValueError(f"format {meta.get('format')!r}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format version {meta.get('format_version')!r}, this reader knows {FORMAT_VERSION}")
        spec = DeltaSpec(kind=meta["kind"], rank=meta.get("rank") or 4, groups=tuple(meta["groups"]))
    except (KeyError, ValueError, TypeError) as e:
        raise FileFormatError(path, f"not a {FORMAT_NAME} file ({e})") from None
    delta: dict[str, Any] = {}
    for key, value in arrays.items():
        if not key.startswith(_PREFIX + "/"):
            raise FileFormatError(path, f"unexpected entry {key!r} (entries are synthesis parameters)")
        name = key[len(_PREFIX) + 1:]
        if name.endswith((".a", ".b")):
            delta.setdefault(name[:-2], {})[name[-1]] = value
        else:
            delta[name] = value
    for name, entry in delta.items():
        if isinstance(entry, dict) and set(entry) != {"a", "b"}:
            raise FileFormatError(path, f"{name}: a low-rank entry needs both .a and .b")
    return StoredDelta(path, delta, spec, meta.get("generator", {}), meta)


def check_delta(stored: StoredDelta, variables: Mapping[str, Any], source: str = "",
                fingerprint: str | None = None) -> None:
    """Refuses, in one line naming both, a delta tuned for another generator (by fingerprint; pass the
    generator's :func:`generator_fingerprint` when checking many deltas), or whose arrays do not fit this
    generator's parameters."""
    mine = fingerprint or generator_fingerprint(variables)
    theirs = stored.generator.get("fingerprint")
    if theirs != mine:
        was = stored.generator.get("source") or "unknown source"
        raise FileFormatError(stored.path, f"a weight delta for generator {theirs} ({was}), not for the generator "
                                           f"given, {mine} ({source or 'this generator'})")
    params = _synthesis_params(variables)
    for name, entry in stored.delta.items():
        if name not in params:
            raise FileFormatError(stored.path, f"{name}: not a parameter of this generator")
        shape = tuple(np.shape(params[name]))
        try:
            got = tuple(np.shape(materialize(entry, shape)))
        except (ValueError, TypeError) as e:
            raise FileFormatError(stored.path, f"{name}: factors do not make a {shape} delta ({e})") from None
        if got != shape:
            raise FileFormatError(stored.path, f"{name}: delta of shape {got}, the parameter's is {shape}")


def tuned_variables(variables: Mapping[str, Any], path: str | Path, source: str = "",
                    fingerprint: str | None = None) -> dict:
    """The generator's variables with the delta file ``path`` applied, after :func:`check_delta`."""
    stored = load_delta(path)
    check_delta(stored, variables, source, fingerprint)
    return apply_delta(variables, jax.tree.map(jnp.asarray, stored.delta))

"""The converted-weights format shared by every network of the project.

A converted network is one directory::

    DST/
      manifest.json   {"format": "magec-converted", "format_version": 1, "kind": "stylegan2",
                       "config": {...architecture...}, "source": {"file": "ffhq.pkl", "sha256": "..."},
                       "converter": "ports.stylegan2/1", "extra": {...}}
      params.npz      uncompressed; one array per leaf, keyed by its '/'-joined pytree path

``kind`` names the network family (``stylegan2``, ``lpips_vgg16``, ``irse50``, ``moco``, ``resnet50``, ``faceres``,
``emotion``, ``linknet``, ...), ``config`` holds everything needed to rebuild the Flax module, and the
params tree is the Flax variables dict (``{"params": ..., "buffers": ...}`` or whatever collections the
model uses). Writes are atomic: the directory appears complete or not at all, with the process's usual
modes. A manifest records no absolute path of the machine that wrote it: a path in ``extra`` is stored as its
file name. Loading is an ``np.load`` of one uncompressed file, well under a second for small models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from magec_jax.errors import FileFormatError
from magec_jax.images import process_umask

FORMAT_NAME = "magec-converted"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARAMS = "params.npz"
_SEP = "/"


@dataclasses.dataclass(frozen=True)
class Converted:
    """A network's weights and everything needed to rebuild it.

    Attributes:
      kind: network family, e.g. ``"stylegan2"``.
      config: JSON-able architecture settings, read by the family's ``config_from_dict``.
      variables: nested dict of numpy arrays (Flax variables: collection -> module -> leaf).
      manifest: the full manifest as loaded or to be written (source, converter, extra).
    """

    kind: str
    config: dict
    variables: dict
    manifest: dict = dataclasses.field(default_factory=dict)


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Flattens a nested dict of arrays to ``{'a/b/c': array}``; keys must not contain '/'."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if _SEP in key:
            raise ValueError(f"pytree key {key!r} contains {_SEP!r}")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + _SEP))
        else:
            flat[name] = np.asarray(value)
    return flat


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    """Inverse of :func:`flatten`."""
    tree: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split(_SEP)
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def save_converted(
    dst: str | os.PathLike,
    converted: Converted,
    *,
    source: str | os.PathLike | None = None,
    converter: str = "",
    overwrite: bool = False,
) -> Path:
    """Writes ``converted`` to the directory ``dst`` atomically and returns its path.

    Args:
      dst: target directory (created; its parent must exist).
      converted: the network; absolute paths among its manifest's ``extra`` values are stored as file names.
      source: the file it was converted from; its name and sha256 go into the manifest.
      converter: converter name and version, e.g. ``"ports.stylegan2/1"``.
      overwrite: replace an existing ``dst``.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst}: already exists (pass overwrite=True / --overwrite)")
    manifest = dict(converted.manifest)
    if "extra" in manifest:
        manifest["extra"] = _without_absolute_paths(manifest["extra"])
    manifest.update(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        kind=converted.kind,
        config=converted.config,
    )
    if converter:
        manifest["converter"] = converter
    if source is not None:
        manifest["source"] = {"file": Path(source).name, "sha256": sha256_file(source)}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        tmp.chmod(0o777 & ~process_umask())  # mkdtemp makes 0700
        np.savez(tmp / PARAMS, **flatten(converted.variables))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _without_absolute_paths(value: Any) -> Any:
    """``value`` with every string that is an absolute path replaced by its file name (recursively)."""
    if isinstance(value, Mapping):
        return {k: _without_absolute_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_absolute_paths(v) for v in value]
    if isinstance(value, (str, os.PathLike)) and Path(value).is_absolute():
        return Path(value).name
    return value


def read_manifest(path: str | os.PathLike) -> dict:
    """Reads and checks ``path/manifest.json``; raises :class:`FileFormatError` naming the problem."""
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise FileFormatError(path, "not a converted-weights directory (run `python -m ports.convert SRC DST`)")
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise FileFormatError(path, f"no {MANIFEST}: not a converted-weights directory") from None
    except (OSError, ValueError) as e:
        raise FileFormatError(mpath, f"unreadable manifest ({e})") from None
    if manifest.get("format") != FORMAT_NAME:
        raise FileFormatError(mpath, f"format is {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise FileFormatError(
            mpath, f"format_version {manifest['format_version']} is newer than this magec_jax supports"
        )
    return manifest


def load_converted(path: str | os.PathLike, *, kind: str | None = None) -> Converted:
    """Loads a converted network written by :func:`save_converted`.

    Args:
      path: the directory.
      kind: if given, the expected network family; another kind is an error naming both.
    """
    path = Path(path)
    manifest = read_manifest(path)
    if kind is not None and manifest.get("kind") != kind:
        raise FileFormatError(path, f"holds a {manifest.get('kind')!r} network, expected {kind!r}")
    try:
        with np.load(path / PARAMS, allow_pickle=False) as npz:
            flat = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise FileFormatError(path, f"no {PARAMS}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise FileFormatError(path / PARAMS, f"corrupt or truncated ({e})") from None
    return Converted(
        kind=manifest["kind"], config=manifest["config"], variables=unflatten(flat), manifest=manifest
    )

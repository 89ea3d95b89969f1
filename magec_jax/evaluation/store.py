"""The evaluation's cache files: ``{key: row}`` tables stored as one atomic ``.npz`` each.

Every file keeps ``names`` (sorted) and one stacked array per column; files that depend on the realism
feature also keep its ``kind``, and one written with another kind, or a scores file that lacks a column of
:data:`SCORE_KEYS` (written before the column existed), reads as empty (it is recomputed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from magec_jax import images as imio
from magec_jax.errors import FileFormatError

SCORE_KEYS = ("lpips_gw_edit", "lpips_edit_cyc", "lpips_gw_cyc", "p_before", "p_after", "id_edit", "features")


def read_rows(path: Path, key: str, kind: str | None = None) -> dict[str, np.ndarray]:
    """``{name: row}`` from a cache written by :func:`write_rows` (empty when absent or of another kind)."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            if kind is not None and str(z["kind"]) != kind:
                return {}
            return dict(zip(map(str, z["names"]), z[key]))
    except (OSError, ValueError, KeyError) as e:
        raise FileFormatError(path, f"unreadable evaluation cache ({e}); delete it to recompute") from None


def write_rows(path: Path, key: str, rows: dict[str, np.ndarray], **extra: np.ndarray) -> None:
    """Writes ``{name: row}`` under column ``key`` (plus ``extra`` arrays) atomically."""
    names = sorted(rows)
    imio.atomic_save_npz(path, names=np.asarray(names, dtype=str), **{key: np.stack([rows[n] for n in names])}, **extra)


def read_scores(path: Path, kind: str) -> dict[str, dict[str, np.ndarray]]:
    """Per-image scores of one (method, edit): ``{name: {key: value}}`` (empty when absent, computed with
    another realism feature, or without one of the columns)."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["kind"]) != kind or not set(SCORE_KEYS) <= set(z.files):
                return {}
            names = list(map(str, z["names"]))
            columns = {k: z[k] for k in SCORE_KEYS}  # each z[k] reads the file: once per column
        return {n: {k: v[i] for k, v in columns.items()} for i, n in enumerate(names)}
    except (OSError, ValueError, KeyError) as e:
        raise FileFormatError(path, f"unreadable scores file ({e}); delete it to recompute") from None


def write_scores(path: Path, scores: dict[str, dict[str, np.ndarray]], kind: str) -> None:
    """Writes the per-image scores of one (method, edit) atomically (see :data:`SCORE_KEYS`)."""
    names = sorted(scores)
    arrays = {k: np.stack([np.asarray(scores[n][k], np.float32) for n in names]) for k in SCORE_KEYS}
    imio.atomic_save_npz(path, names=np.asarray(names, dtype=str), kind=np.asarray(kind), **arrays)

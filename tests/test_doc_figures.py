"""tools/doc_figures.py: the docs' demo figures are cut from a demo run's own outputs, tile for tile."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from magec_jax import images as imio

sys.path.insert(0, str(REPO / "tools"))
import doc_figures  # noqa: E402  (tools/ is not a package)

TILE = 16


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _fake_run(tmp_path, attributes, strengths):
    """A demo run's files as the job writes them: latents, per-face edit sheets, face records, pasted photos.
    Every tile has its own flat colour, so the figures can be checked tile for tile."""
    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    colours = {}
    for name in ("a__face0", "b__face0", "c__face0", "d__face0", "e__face0"):
        (run / f"{name}.npz").parent.mkdir(parents=True, exist_ok=True)
        (run / f"{name}.npz").write_bytes(b"")
        tiles = rng.integers(0, 256, (len(attributes) * (2 + len(strengths)), 1, 1, 3), dtype=np.uint8)
        colours[name] = tiles[:, 0, 0]
        _png(run / "edits" / f"{name}.png",
             imio.grid(np.broadcast_to(tiles, (len(tiles), TILE, TILE, 3)), columns=2 + len(strengths)))
    for photo, (attribute, strength), _ in doc_figures.PHOTOGRAPHS:
        photo_path = tmp_path / f"{photo}.jpg"
        _png(photo_path, np.full((24, 20, 3), 10, np.uint8))
        (run / f"{photo}__face0.json").write_text(json.dumps({"photo": str(photo_path)}))
        _png(run / "pasted" / f"{photo}.png", np.full((24, 20, 3), 20, np.uint8))
        _png(run / "pasted" / f"{photo}__ifg_{attribute}_{strength:+g}.png", np.full((24, 20, 3), 30, np.uint8))
    return run, colours


def test_figures_hold_the_runs_tiles(tmp_path):
    attributes, strengths = doc_figures.demo_edit_grid()
    assert attributes == ("Male", "Young", "Smiling") and strengths == (-3.0, 0.0, 3.0)
    run, colours = _fake_run(tmp_path, attributes, strengths)
    out = tmp_path / "docs"
    assert doc_figures.main([str(run), "--out", str(out)]) == 0

    grid = np.asarray(Image.open(out / "demo_edit_grid_first4.png").convert("RGB"))
    found = {tuple(c) for c in grid.reshape(-1, 3)}
    for name in ("a__face0", "b__face0", "c__face0", "d__face0"):  # the first four, in the run's order
        assert all(tuple(c) in found for c in colours[name])
    assert not any(tuple(c) in found for c in colours["e__face0"])

    pasted = np.asarray(Image.open(out / "pasted_example.png").convert("RGB"))
    assert all((pasted == v).all(axis=-1).sum() >= 2 * 24 * 20 for v in (10, 20, 30))


def test_a_missing_run_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="run the demo first"):
        doc_figures.main([str(tmp_path / "nowhere"), "--out", str(tmp_path)])

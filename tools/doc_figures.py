"""The demo's figures in ``docs/``, made from a finished demo run.

    python -m magec_jax.invert --config configs/demo.py
    python tools/doc_figures.py out/demo

Writes, from the run's own outputs (nothing is rendered again, so the figures show exactly what the run wrote):

* ``docs/demo_edit_grid_first4.png``: the first four faces of the run's edit grid (its order: sorted by
  name), one row per attribute of ``configs/demo.py``'s edit grid, columns input | G(w) | each strength;
* ``docs/pasted_example.png``: for each whole photograph of ``examples/`` (``PHOTOGRAPHS``), the photograph,
  its pasted reconstruction (``pasted/<photo>.png``) and one pasted edit (``pasted/<photo>__<label>.png``);
* with ``--styleflow-edits DIR`` (an edit run with ``--styleflow`` rows on the demo's latents, ``STYLEFLOW_EDITS``
  gives the command), ``docs/demo_styleflow_edits.png``: that run's labelled ``grid.png`` as it wrote it.

``--out DIR`` writes them elsewhere. Takes a few seconds; needs no network.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from magec_jax import images as imio
from magec_jax.editing.render import grid_tiles, labelled_sheet

REPO = Path(__file__).resolve().parents[1]
# (photograph, the edit shown, what to notice): the two whole photographs of examples/.
PHOTOGRAPHS = (
    ("Rob_Schneider_0001", ("Smiling", -3.0), "two faces, both inverted and edited"),
    ("Maria_Wetterstrand_0001", ("Male", 3.0), "tilted head"),
)


# the edit run behind docs/demo_styleflow_edits.png (the first four faces of the demo run, by name)
STYLEFLOW_EDITS = ("python -m magec_jax.edit out/demo/Aaron_Sorkin_0001__face0.npz out/demo/Billy_Edelin_0001__face0.npz "
                   "out/demo/Deb_Santos_0001__face0.npz out/demo/Goran_Zivkovic_0001__face0.npz --bundle demo/bundle "
                   "--out out/demo_styleflow --styleflow expected_age=25,expected_age=55 "
                   "--styleflow gender_logit=-2,gender_logit=4 --styleflow happy_log_odds=-4,happy_log_odds=4")


def demo_edit_grid() -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The attributes and strengths of ``configs/demo.py``'s edit grid."""
    spec = importlib.util.spec_from_file_location("demo_config", REPO / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    grid = module.get_config().edit_grid
    return tuple(grid.attributes), tuple(float(s) for s in grid.strengths)


def read_rgb(path: Path) -> np.ndarray:
    if not path.is_file():
        raise SystemExit(f"error: {path}: not found; run the demo first (python -m magec_jax.invert "
                         f"--config configs/demo.py)")
    return np.asarray(Image.open(path).convert("RGB"))


def edit_grid_figure(run: Path, attributes: tuple[str, ...], strengths: tuple[float, ...], count: int) -> np.ndarray:
    """The first ``count`` faces of the run's edit grid, laid out as the run's own ``edit_grid.png``."""
    names = sorted(p.stem for p in run.glob("*.npz") if p.is_file())[:count]
    if not names:
        raise SystemExit(f"error: {run}: no latents; run the demo first")
    blocks = []
    for name in names:
        sheet = read_rgb(run / "edits" / f"{name}.png")
        tile = (sheet.shape[0] - 2) // len(attributes) - 2
        blocks.append((name, list(zip(attributes, grid_tiles(sheet, len(attributes), 2 + len(strengths), tile)))))
    columns = ["input", "G(w)"] + [f"{s:+g}" if s else "0" for s in strengths]
    return labelled_sheet(blocks, columns)


def pasted_figure(run: Path) -> np.ndarray:
    """Photograph | pasted reconstruction | pasted edit, one block per photograph of ``PHOTOGRAPHS``."""
    blocks = []
    for photo_name, (attribute, strength), note in PHOTOGRAPHS:
        record = json.loads((run / f"{photo_name}__face0.json").read_text())
        photo = Path(record["photo"])
        photo = photo if photo.is_absolute() else REPO / photo
        label = f"ifg_{attribute}_{strength:+g}"
        tiles = [read_rgb(photo), read_rgb(run / "pasted" / f"{photo_name}.png"),
                 read_rgb(run / "pasted" / f"{photo_name}__{label}.png")]
        blocks.append((f"{photo.name} ({note})", [(f"{attribute} {strength:+g}", tiles)]))
    return labelled_sheet(blocks, ["photograph", "pasted reconstruction", "pasted edit"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the demo's out_dir (out/demo)")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="where the figures go")
    parser.add_argument("--faces", type=int, default=4, help="faces in the edit-grid figure")
    parser.add_argument("--styleflow-edits", type=Path, default=None, help="an edit run with StyleFlow rows "
                        "(STYLEFLOW_EDITS): its grid.png becomes docs/demo_styleflow_edits.png")
    args = parser.parse_args(argv)
    attributes, strengths = demo_edit_grid()
    figures = [("demo_edit_grid_first4.png", edit_grid_figure(args.run, attributes, strengths, args.faces)),
               ("pasted_example.png", pasted_figure(args.run))]
    if args.styleflow_edits is not None:
        figures.append(("demo_styleflow_edits.png", read_rgb(args.styleflow_edits / "grid.png")))
    for name, figure in figures:
        path = imio.atomic_write_bytes(args.out / name, imio.png_bytes(figure))
        print(f"{name}: {figure.shape[1]}x{figure.shape[0]} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

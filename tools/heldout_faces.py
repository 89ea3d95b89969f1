"""Writes photographs of HELD-OUT LFW people (never seen by the demo generator) as PNG crops, for inversion
and evaluation.

    python tools/heldout_faces.py --count 16 --out out/lfw_heldout16     # the faces of configs/eval_demo.py

One photograph per person (:func:`magec_jax.training.data.heldout_portraits`: spread over the sorted held-out
people; a count that divides a larger one picks a subset, so the 8 ``examples/`` are among the 16), cut as the
central ``crop`` box the generator was trained on and saved at that native size as ``<Person>_0001.png``.
The held-out rule (person-name hash below ``--fraction``) and the crop default to the demo run's
(``configs/lfw_stylegan2.py``); ``tools/build_demo.py`` calls the same code for ``examples/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from magec_jax.images import png_bytes
from magec_jax.training import data as lfw

REPO = Path(__file__).resolve().parents[1]


def write_portraits(source: Path, out_dir: Path, count: int, *, crop: int = lfw.DEFAULT_CROP,
                    fraction: float = lfw.DEFAULT_HELDOUT_FRACTION) -> list[str]:
    """Replaces ``out_dir`` with ``count`` held-out portraits of ``source``; returns their source paths."""
    chosen = lfw.heldout_portraits(lfw.list_source(source), count, fraction)
    crops = lfw.decode_source(source, chosen, crop, crop)  # the training crop, at its native size
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for path, img in zip(chosen, crops):
        (out_dir / f"{Path(path).stem}.png").write_bytes(png_bytes(img))
    return chosen


def main() -> None:
    shared = Path(os.environ.get("MAGEC_SHARED", REPO.parent / "shared"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=shared / "data" / "lfw" / "lfw-deepfunneled.tar")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "lfw_heldout16")
    parser.add_argument("--crop", type=int, default=lfw.DEFAULT_CROP)
    parser.add_argument("--fraction", type=float, default=lfw.DEFAULT_HELDOUT_FRACTION)
    args = parser.parse_args()
    chosen = write_portraits(args.source, args.out, args.count, crop=args.crop, fraction=args.fraction)
    print(f"{len(chosen)} held-out faces in {args.out}: {', '.join(Path(p).stem for p in chosen)}")


if __name__ == "__main__":
    main()

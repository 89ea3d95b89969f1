"""Writes photographs of HELD-OUT LFW people (never seen by the demo generator) as PNG crops, for inversion
and evaluation.

    python tools/heldout_faces.py --count 48 --out runs/lfw_heldout48     # the faces of configs/eval_demo.py
    python tools/heldout_faces.py --count 16 --exclude runs/lfw_heldout48 --out runs/lfw_heldout_val16

One photograph per person (:func:`magec_jax.training.data.heldout_portraits`: spread over the sorted held-out
people; a count that divides a larger one picks a subset, so the 8 ``examples/`` are among the 16), cut as the
central ``crop`` box the generator was trained on and saved at that native size as ``<Person>_0001.png``.
The held-out rule (person-name hash below ``--fraction``) and the crop default to the demo run's
(``configs/lfw_stylegan2.py``); ``tools/build_demo.py`` calls the same code for ``examples/``.

``--exclude DIR`` leaves out the people who already have a portrait in DIR and spreads the pick over the
others the same way: a validation set of people disjoint from the evaluation set, on which settings can be
chosen without touching the evaluation faces.

:func:`write_photographs` copies whole, uncropped LFW photographs of held-out people (:data:`PHOTOGRAPHS`, one
with two people) for the photograph demo (``config.align``: faces found, aligned, inverted, pasted back).
"""

from __future__ import annotations

import argparse
import os
import tarfile
from pathlib import Path

from magec_jax.errors import MagecError
from magec_jax.images import png_bytes
from magec_jax.training import data as lfw

REPO = Path(__file__).resolve().parents[1]
# Whole LFW photographs of held-out people, none of them among the evaluation faces: a tilted head, and two people.
PHOTOGRAPHS = ("Maria_Wetterstrand/Maria_Wetterstrand_0001.jpg", "Rob_Schneider/Rob_Schneider_0001.jpg")


def pick_portraits(paths: list[str], count: int, *, fraction: float = lfw.DEFAULT_HELDOUT_FRACTION,
                   exclude: frozenset[str] = frozenset()) -> list[str]:
    """One photograph each of ``count`` held-out people not in ``exclude``, spread over the sorted remaining
    people as :func:`magec_jax.training.data.heldout_portraits` spreads them (its pick when nobody is excluded)."""
    if not exclude:
        return lfw.heldout_portraits(paths, count, fraction)
    every = lfw.heldout_portraits(paths, len(lfw.heldout_people(paths, fraction)), fraction)
    left = [p for p in every if lfw.person_of(p) not in exclude]
    if not 0 < count <= len(left):
        raise MagecError(f"asked for {count} held-out people besides {len(exclude)} excluded; {len(left)} are left")
    return [left[i * len(left) // count] for i in range(count)]


def people_in(folder: Path) -> frozenset[str]:
    """The people of the ``<Person>_NNNN.png`` portraits in ``folder``."""
    if not folder.is_dir():
        raise MagecError(f"{folder}: no such folder of portraits to exclude")
    return frozenset(p.stem.rsplit("_", 1)[0] for p in folder.glob("*.png"))


def write_portraits(source: Path, out_dir: Path, count: int, *, crop: int = lfw.DEFAULT_CROP,
                    fraction: float = lfw.DEFAULT_HELDOUT_FRACTION, exclude: frozenset[str] = frozenset()) -> list[str]:
    """Replaces the portraits (top-level ``*.png``) of ``out_dir`` with ``count`` held-out portraits of ``source``
    (none of the ``exclude`` people); sub-folders and other files stay. Returns their source paths."""
    chosen = pick_portraits(lfw.list_source(source), count, fraction=fraction, exclude=exclude)
    crops = lfw.decode_source(source, chosen, crop, crop)  # the training crop, at its native size
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    for path, img in zip(chosen, crops):
        (out_dir / f"{Path(path).stem}.png").write_bytes(png_bytes(img))
    return chosen


def write_photographs(source: Path, out_dir: Path, paths: tuple[str, ...] = PHOTOGRAPHS, *,
                      fraction: float = lfw.DEFAULT_HELDOUT_FRACTION) -> list[Path]:
    """Copies the photographs ``paths`` of ``source`` (the LFW tar or folder) into ``out_dir``, byte for byte
    (250x250 JPEGs, uncropped); every one must show a held-out person. Returns the files written."""
    for path in paths:
        if not lfw.is_heldout(lfw.person_of(path), fraction):
            raise MagecError(f"{path}: {lfw.person_of(path)} is not a held-out person")
    if source.is_dir():
        data = {path: (source / path).read_bytes() for path in paths}
    else:
        with tarfile.open(source) as tar:
            members = {m.name: m for m in tar.getmembers() if m.name in paths}
            missing = [p for p in paths if p not in members]
            if missing:
                raise MagecError(f"{source}: no {missing[0]}")
            data = {path: tar.extractfile(members[path]).read() for path in paths}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path, content in data.items():
        (out_dir / Path(path).name).write_bytes(content)
        written.append(out_dir / Path(path).name)
    return written


def main() -> None:
    shared = Path(os.environ.get("MAGEC_SHARED", REPO.parent / "shared"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=shared / "data" / "lfw" / "lfw-deepfunneled.tar")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "lfw_heldout16")
    parser.add_argument("--crop", type=int, default=lfw.DEFAULT_CROP)
    parser.add_argument("--fraction", type=float, default=lfw.DEFAULT_HELDOUT_FRACTION)
    parser.add_argument("--exclude", type=Path, help="a folder of portraits whose people are left out")
    args = parser.parse_args()
    exclude = people_in(args.exclude) if args.exclude else frozenset()
    chosen = write_portraits(args.source, args.out, args.count, crop=args.crop, fraction=args.fraction,
                             exclude=exclude)
    print(f"{len(chosen)} held-out faces in {args.out}: {', '.join(Path(p).stem for p in chosen)}")


if __name__ == "__main__":
    main()

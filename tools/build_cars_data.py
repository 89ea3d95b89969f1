"""Builds the cars descriptor F's training data from the shared Stanford Cars crops, keeping out every image the
cars generator holds out, and (``--examples N``) the cars demo's example photographs.

    python tools/build_cars_data.py                      # runs/cars_data (4 s)
    python tools/build_cars_data.py --examples 8         # also examples/cars/: 8 held-out photographs

Reads ``cars128_train.tar`` and ``labels.csv`` of ``shared/data/stanford_cars`` (``$MAGEC_SHARED``, else
``../shared`` beside the checkout). The tar is read member by member and never extracted: its only members may
be regular files named ``cars128/<5 digits>.jpg`` (and the folder ``cars128``); a tar holding anything else (a
link, a device, ``../x``, an absolute or other name) is refused whole, before anything is written. Each image is
checked with the project's reading policy (``magec_jax.images.open_image``); one that cannot be used is reported
in one line, left out and listed in ``summary.json``.

Writes, into ``--out`` (replaced whole, atomically):
  * ``images/<file>``: the TRAINING images, byte for byte: those whose file name is not held out
    (``magec_jax.training.data.is_heldout(file, 0.1)``, the rule of ``configs/cars_stylegan2.py``);
  * ``attributes.txt``: their ``list_attr_celeba.txt``-format table (a count line, a header of attribute names,
    ``<file> v1 v2 ...`` with 1 / -1), the input of ``python -m magec_jax.train_classifier`` with
    ``configs/classifier_cars.py``;
  * ``heldout/<file>`` and ``heldout_attributes.txt``: the held-out images (402) and their table, on which
    ``tools/eval_cars_classifier.py`` measures F;
  * ``heldout.txt``: a list file of the held-out images (``heldout/<file>``, one a line), readable by every
    command that takes an image folder or list;
  * ``summary.json``: the counts, positives per attribute, skipped images.

The attributes of F (:data:`ATTRIBUTES`) are the body types that are both learnable and visible as an edit of a
64 px letterboxed car: ``is_suv`` (1,289 training positives, 34 classes: a tall boxy body), ``is_convertible``
(950, 26: no roof or a soft top), ``is_pickup`` (699, 18: an open cargo bed) and ``is_sedan`` (1,722, 46: the
three-box saloon, the commonest body, so that an edit towards another body can also be read as leaving it).
Left out: ``is_coupe`` (a coupe and a sedan differ in two doors and a roofline, a few pixels at 64 px, and 5 of
the 14 "Other" classes, labelled 0 for every body, are coupes: a noisy label for an edit nobody could see),
``is_hatchback`` and ``is_van`` (490 and 487 positives from only 13 classes each: F would learn 13 car models,
not a body type), ``is_recent`` (a model year, not a body). The labels are per class (from the class name), so
F learns what the classes of a body type share.

``--examples N`` copies N held-out photographs, the 128 px crops exactly as the tar gives them, into
``--examples-dir`` (``examples/cars/``) with a ``README.md`` naming each one's class and body type. They are
spread over body types (:func:`pick_examples`: one per body type in :data:`EXAMPLE_BODIES` order, then round
again; within a body type the first colour photographs by file name, one class at most once): deterministic.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from magec_jax.errors import FileFormatError, MagecError
from magec_jax.images import atomic_write_bytes, atomic_write_json, opaque_rgb, open_image, process_umask
from magec_jax.training.data import is_heldout

REPO = Path(__file__).resolve().parents[1]
ATTRIBUTES = ("is_suv", "is_convertible", "is_pickup", "is_sedan")
HELDOUT_FRACTION = 0.1  # configs/cars_stylegan2.py: heldout_by="file", the training default fraction
EXAMPLE_BODIES = ("Sedan", "SUV", "Convertible", "Cab", "Coupe", "Hatchback", "Van", "Minivan", "Wagon", "Other")
FOLDER = "cars128"
MEMBER = re.compile(rf"{FOLDER}/(\d{{5}}\.jpg)")  # the only file names a tar may hold
FILE = re.compile(r"\d{5}\.jpg")
LABEL_COLUMNS = ("file", "class_name", "body", "gray")


def read_labels(path: Path, attributes: Sequence[str] = ATTRIBUTES) -> dict[str, dict[str, str]]:
    """``labels.csv`` as ``{file: row}``; checks the columns used, the file names and the 0/1 values.

    Raises:
      FileFormatError: naming ``path`` (and the line) for a missing column, a bad name or value, a repeated file.
    """
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in (*LABEL_COLUMNS, *attributes) if c not in header]
            if missing:
                raise FileFormatError(path, f"no column {missing[0]!r} (expected labels.csv of the cars data)")
            rows: dict[str, dict[str, str]] = {}
            for line_no, row in enumerate(reader, start=2):
                name = row["file"]
                if not isinstance(name, str) or not FILE.fullmatch(name):
                    raise FileFormatError(path, f"line {line_no}: file {name!r} is not <5 digits>.jpg")
                bad = [a for a in attributes if row[a] not in ("0", "1")]
                if bad:
                    raise FileFormatError(path, f"line {line_no}: {bad[0]} is {row[bad[0]]!r}, expected 0 or 1")
                if name in rows:
                    raise FileFormatError(path, f"line {line_no}: {name} is listed twice")
                rows[name] = row
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        detail = " ".join(str(e).split())
        raise FileFormatError(path, f"unreadable labels ({e.__class__.__name__}: {detail})") from None
    if not rows:
        raise FileFormatError(path, "no rows")
    return rows


def read_members(path: Path) -> dict[str, bytes]:
    """The images of the cars tar as ``{file: bytes}``, read member by member (nothing is extracted).

    Raises:
      FileFormatError: naming ``path``: not a readable tar, or a member that is not a regular file named
        ``cars128/<5 digits>.jpg`` (the whole tar is refused), or a name repeated.
    """
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isdir() and member.name.rstrip("/") == FOLDER:
                    continue
                found = MEMBER.fullmatch(member.name)
                if not (member.isfile() and found):
                    kind = "a regular file" if member.isfile() else "not a regular file"
                    raise FileFormatError(path, f"member {member.name!r} ({kind}): only regular files named "
                                                f"{FOLDER}/<5 digits>.jpg are read; refused, nothing written")
                if found.group(1) in files:
                    raise FileFormatError(path, f"member {member.name!r} appears twice")
                files[found.group(1)] = tar.extractfile(member).read()
    except (OSError, tarfile.TarError, EOFError) as e:
        detail = " ".join(str(e).split())  # tarfile's messages may span lines; the report is one
        raise FileFormatError(path, f"not a readable tar ({e.__class__.__name__}: {detail})") from None
    if not files:
        raise FileFormatError(path, f"no {FOLDER}/<5 digits>.jpg member")
    return files


def usable(name: str, data: bytes) -> str | None:
    """None when the image can be read by the project's policy (opaque RGB or grey), else the reason."""
    try:
        opaque_rgb(name, open_image(data, name=name))
    except FileFormatError as e:
        return e.problem
    return None


def attribute_table(names: Sequence[str], labels: dict[str, dict[str, str]], attributes: Sequence[str]) -> bytes:
    """A ``list_attr_celeba.txt``-format table of ``names`` (1 / -1 values)."""
    rows = [" ".join([n, *("1" if labels[n][a] == "1" else "-1" for a in attributes)]) for n in names]
    return f"{len(rows)}\n{' '.join(attributes)}\n".encode() + "".join(r + "\n" for r in rows).encode()


def build(tar_path: Path, labels_path: Path, out: Path, *, attributes: Sequence[str] = ATTRIBUTES,
          fraction: float = HELDOUT_FRACTION, log=print) -> dict:
    """Writes ``out`` (see the module docstring) and returns its summary.

    Raises:
      FileFormatError: a bad tar or labels file, or the two disagreeing (one line naming the file).
    """
    labels = read_labels(labels_path, attributes)
    files = read_members(tar_path)
    unlabelled = sorted(set(files) - set(labels))
    if unlabelled:
        raise FileFormatError(tar_path, f"{len(unlabelled)} images have no row in {labels_path.name}, "
                                        f"e.g. {unlabelled[0]}")
    absent = sorted(set(labels) - set(files))
    if absent:
        raise FileFormatError(labels_path, f"{len(absent)} rows have no image in {tar_path.name}, e.g. {absent[0]}")
    skipped = []
    for name in sorted(files):
        reason = usable(f"{tar_path}:{FOLDER}/{name}", files[name])
        if reason is not None:
            log(f"skipped {tar_path}:{FOLDER}/{name}: {reason}")
            skipped.append(dict(image=f"{FOLDER}/{name}", reason=reason))
    left_out = {s["image"].split("/")[-1] for s in skipped}
    kept = [n for n in sorted(files) if n not in left_out]
    heldout = [n for n in kept if is_heldout(n, fraction)]
    train = [n for n in kept if not is_heldout(n, fraction)]

    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for folder, names in (("images", train), ("heldout", heldout)):
            (tmp / folder).mkdir()
            for n in names:
                (tmp / folder / n).write_bytes(files[n])
        atomic_write_bytes(tmp / "attributes.txt", attribute_table(train, labels, attributes))
        atomic_write_bytes(tmp / "heldout_attributes.txt", attribute_table(heldout, labels, attributes))
        atomic_write_bytes(tmp / "heldout.txt", "".join(f"heldout/{n}\n" for n in heldout).encode())
        summary = dict(
            source=tar_path.name, labels=labels_path.name, heldout_rule=f"is_heldout(file name, {fraction})",
            attributes=list(attributes), images=len(files), train=len(train), heldout=len(heldout),
            train_positives={a: sum(labels[n][a] == "1" for n in train) for a in attributes},
            heldout_positives={a: sum(labels[n][a] == "1" for n in heldout) for a in attributes},
            skipped=skipped,
        )
        atomic_write_json(tmp / "summary.json", summary)
        tmp.chmod(0o777 & ~process_umask())  # mkdtemp makes 0700
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def pick_examples(labels: dict[str, dict[str, str]], candidates: Sequence[str], count: int) -> list[str]:
    """``count`` of ``candidates`` (held-out files) spread over body types: rounds over :data:`EXAMPLE_BODIES`,
    each taking the body type's first colour photograph (by file name) of a class not yet picked."""
    by_body = {b: [n for n in sorted(candidates) if labels[n]["body"] == b and labels[n]["gray"] != "1"]
               for b in EXAMPLE_BODIES}
    picked: list[str] = []
    classes: set[str] = set()
    while len(picked) < count:
        progress = False
        for body in EXAMPLE_BODIES:
            choice = next((n for n in by_body[body] if labels[n]["class_name"] not in classes), None)
            if choice is None or len(picked) == count:
                continue
            picked.append(choice)
            classes.add(labels[choice]["class_name"])
            by_body[body].remove(choice)
            progress = True
        if not progress:
            raise MagecError(f"asked for {count} examples; only {len(picked)} held-out photographs of distinct "
                             "classes are available")
    return picked


def write_examples(tar_path: Path, labels_path: Path, folder: Path, count: int, *,
                   fraction: float = HELDOUT_FRACTION) -> list[str]:
    """Copies ``count`` held-out crops (:func:`pick_examples`) byte for byte into ``folder`` with a README;
    other ``<5 digits>.jpg`` files there are removed. Returns the files picked."""
    labels = read_labels(labels_path)
    files = read_members(tar_path)
    heldout = [n for n in files if n in labels and is_heldout(n, fraction) and usable(n, files[n]) is None]
    picked = pick_examples(labels, heldout, count)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.jpg"):
        if FILE.fullmatch(stale.name) and stale.name not in picked:
            stale.unlink()
    for n in picked:
        atomic_write_bytes(folder / n, files[n])
    lines = [
        "# Cars examples",
        "",
        f"{count} Stanford Cars photographs that the cars generator never saw (held out: file name hash below "
        f"{fraction}, `configs/cars_stylegan2.py`), one per body type where it can, as the data gives them: the car's "
        "bounding box at 128 px on its long side. Written by `python tools/build_cars_data.py "
        f"--examples {count}`. Stanford Cars (Krause et al., 3dRR-13): non-commercial research use only, see "
        "`../shared/data/stanford_cars/README.md`.",
        "",
        "| file | class | body | size |",
        "| --- | --- | --- | --- |",
    ]
    for n in picked:
        width, height = open_image(files[n], name=n).size
        lines.append(f"| `{n}` | {labels[n]['class_name']} | {labels[n]['body']} | {width}x{height} |")
    atomic_write_bytes(folder / "README.md", ("\n".join(lines) + "\n").encode())
    return picked


def main(argv: Sequence[str] | None = None) -> int:
    shared = Path(os.environ.get("MAGEC_SHARED", REPO.parent / "shared")) / "data" / "stanford_cars"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tar", type=Path, default=shared / "cars128_train.tar", help="the cars crops tar")
    parser.add_argument("--labels", type=Path, default=shared / "labels.csv", help="their labels.csv")
    parser.add_argument("--out", type=Path, default=Path("runs/cars_data"), help="output folder (replaced)")
    parser.add_argument("--fraction", type=float, default=HELDOUT_FRACTION, help="the held-out fraction")
    parser.add_argument("--examples", type=int, default=0, metavar="N", help="also copy N held-out photographs")
    parser.add_argument("--examples-dir", type=Path, default=REPO / "examples" / "cars")
    args = parser.parse_args(argv)
    try:
        summary = build(args.tar, args.labels, args.out, fraction=args.fraction)
        print(f"{args.out}: {summary['train']} training images, {summary['heldout']} held out, "
              f"{len(summary['skipped'])} skipped; positives "
              + ", ".join(f"{a} {n}" for a, n in summary["train_positives"].items()))
        if args.examples:
            picked = write_examples(args.tar, args.labels, args.examples_dir, args.examples, fraction=args.fraction)
            print(f"{args.examples_dir}: {', '.join(picked)}")
    except MagecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

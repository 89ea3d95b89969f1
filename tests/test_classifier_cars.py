"""The cars descriptor F's data path: letterbox framing from the classifier config to its batches, resume refusing
another framing, and ``tools/build_cars_data.py`` on a small synthetic tar and labels.csv (the table it writes,
the held-out files it keeps out, hostile tar members refused whole, bad input reported in one line), and the
scores of ``tools/eval_cars_classifier.py``.

None of these compiles a network: each runs in well under a second.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from magec_jax.classifier import data as classifier_data
from magec_jax.classifier import loop as classifier_loop
from magec_jax.classifier.config import TrainConfig, default_config
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.images import frame, load_image
from magec_jax.training.data import is_heldout

sys.path.insert(0, str(REPO / "tools"))
import build_cars_data  # noqa: E402  (tools/ is not a package)
import eval_cars_classifier  # noqa: E402


def _car(w: int, h: int, seed: int) -> Image.Image:
    """Random pixels, none black, so that letterbox bands (exactly black) tell themselves apart."""
    return Image.fromarray(np.random.default_rng(seed).integers(40, 256, (h, w, 3), dtype=np.uint8))


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


# ---- the classifier: framing from the config to the batches -------------------------------------------------


@pytest.fixture()
def folder(tmp_path):
    """Four wide PNG 'cars' and a one-column table."""
    images = tmp_path / "images"
    images.mkdir()
    for i, (w, h) in enumerate([(48, 16), (40, 20), (30, 12), (24, 24)]):
        _car(w, h, i).save(images / f"{i}.png")
    table = tmp_path / "attributes.txt"
    table.write_text("4\nis_suv\n0.png 1\n1.png -1\n2.png 1\n3.png -1\n")
    return images, table


def _config(images, table, out, **overrides):
    config = default_config()
    config.update(dict(images=str(images), attributes=str(table), out_dir=str(out), image_size=16, batch_size=2,
                       val_fraction=0.25, head_epochs=0, full_epochs=1, flip=False, num_workers=1, **overrides))
    return config


def test_letterbox_framing_reaches_the_classifier_batches(folder):
    images, table = folder
    cfg = TrainConfig(images=str(images), attributes=str(table), out_dir="unused", image_size=16, batch_size=2,
                      flip=False, framing="letterbox")
    data = classifier_data.read_attribute_table(table, images)
    loader = classifier_data.Loader(data.paths, cfg.image_size, 1, framing=cfg.framing)
    train = np.arange(4)
    try:
        batches = list(classifier_data.train_batches(loader, train, data.labels_NxK, cfg, 0, 2))
    finally:
        loader.close()
    seen = 0
    for _, batch_Bx16x16x3, labels_BxK, _ in batches:
        order = classifier_data.epoch_batches(4, 2, cfg.seed, 0)[seen // 2]
        for row, i in enumerate(order):
            expected, (left, top, right, bottom) = frame(Image.open(data.paths[i]).convert("RGB"), 16, "letterbox")
            np.testing.assert_array_equal(batch_Bx16x16x3[row], expected.astype(np.float32) / 127.5 - 1)
            assert labels_BxK[row, 0] == data.labels_NxK[i, 0]
            if (right - left, bottom - top) != (16, 16):  # the wide ones: black bands, value -1, above and below
                assert top > 0 and (batch_Bx16x16x3[row, :top] == -1).all()
                assert (batch_Bx16x16x3[row, bottom:] == -1).all()
            seen += 1
    assert seen == 4
    # The default, square framing fills the frame: no band.
    square = load_image(data.paths[0], 16, min_size=1)
    letterbox = load_image(data.paths[0], 16, min_size=1, framing="letterbox")
    assert (letterbox[0] == -1).all() and (square[0] > -1).any()


def test_the_trainer_builds_its_loader_with_the_configured_framing(folder, tmp_path, monkeypatch):
    images, table = folder
    built = {}

    class Stop(Exception):
        pass

    def recording_loader(paths, image_size, num_workers, **kwargs):  # stops the run before anything compiles
        built.update(kwargs, image_size=image_size)
        raise Stop

    monkeypatch.setattr(classifier_loop, "Loader", recording_loader)
    with pytest.raises(Stop):
        classifier_loop.run(_config(images, table, tmp_path / "run", framing="letterbox"))
    assert built["framing"] == "letterbox" and built["image_size"] == 16
    assert json.loads((tmp_path / "run" / "config.json").read_text())["framing"] == "letterbox"


def test_resume_refuses_a_changed_framing(folder, tmp_path):
    images, table = folder
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)  # a run with a checkpoint folder, framed "square"
    (run_dir / "config.json").write_text(json.dumps(_config(images, table, run_dir).to_dict()))
    with pytest.raises(MagecError, match=r"config\.framing differs from the run being resumed "
                                         r"\('square' != 'letterbox'\); use another out_dir"):
        classifier_loop.run(_config(images, table, run_dir, framing="letterbox"))
    # A config.json that predates the field means the square framing it had then.
    (run_dir / "config.json").write_text(json.dumps({"image_size": 16}))
    with pytest.raises(MagecError, match=r"config\.framing differs"):
        classifier_loop.check_resume(run_dir, _config(images, table, run_dir, framing="letterbox"))
    classifier_loop.check_resume(run_dir, _config(images, table, run_dir))  # the same framing resumes


def test_framing_is_checked_and_letterbox_sizes_by_the_long_side(tmp_path):
    with pytest.raises(ValueError, match="framing must be one of square, letterbox, got 'stretch'"):
        TrainConfig(images="i", attributes="a", out_dir="o", framing="stretch")
    path = tmp_path / "strip.png"
    _car(40, 10, 0).save(path)
    assert load_image(path, 32, min_size=20, framing="letterbox").shape == (32, 32, 3)
    with pytest.raises(FileFormatError, match=r"strip\.png: too small: 40x10, the shorter side must be at least 20"):
        load_image(path, 32, min_size=20)
    with pytest.raises(ValueError, match="unknown framing 'stretch'"):
        load_image(path, 32, framing="stretch")


# ---- tools/build_cars_data.py --------------------------------------------------------------------------------

BODIES = {"Sedan": "is_sedan", "SUV": "is_suv", "Convertible": "is_convertible", "Cab": "is_pickup",
          "Coupe": "is_coupe", "Van": "is_van"}
ALL_ATTRIBUTES = ("is_suv", "is_convertible", "is_pickup", "is_sedan", "is_coupe", "is_hatchback", "is_van",
                  "is_recent")
# 24 names: the first 6 held out at 0.1 and the first 18 kept (held-out names are rare: about 1 in 10)
NAMES = ([n for n in (f"{i:05d}.jpg" for i in range(1, 400)) if is_heldout(n, 0.1)][:6]
         + [n for n in (f"{i:05d}.jpg" for i in range(1, 400)) if not is_heldout(n, 0.1)][:18])


def _write_labels(path, names, drop_column=None):
    bodies = list(BODIES)
    columns = ["file", "class_id", "class_name", "make", "year", "body", "gray", *ALL_ATTRIBUTES]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([c for c in columns if c != drop_column])
        for name in sorted(names):
            k = NAMES.index(name)  # the 6 held-out names get 6 different bodies
            body = bodies[k % len(bodies)]
            row = dict(file=name, class_id=k % 10, class_name=f"Make Model{k % 10} {body} 2012", make="Make",
                       year=2012, body=body, gray=0, **{a: int(BODIES[body] == a) for a in ALL_ATTRIBUTES})
            writer.writerow([row[c] for c in columns if c != drop_column])


def _add(tar, name, data=b"", kind=tarfile.REGTYPE, target=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, target, len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _write_tar(path, names, extra=()):
    with tarfile.open(path, "w") as tar:
        _add(tar, "cars128", kind=tarfile.DIRTYPE)
        for k, name in enumerate(names):
            _add(tar, f"cars128/{name}", _jpeg(_car(32, 12 + k % 5, k)))
        for args in extra:
            _add(tar, *args)


@pytest.fixture()
def source(tmp_path):
    tar, labels = tmp_path / "cars.tar", tmp_path / "labels.csv"
    _write_tar(tar, NAMES)
    _write_labels(labels, NAMES)
    return tar, labels


def test_build_writes_the_training_table_and_keeps_the_heldout_files_out(source, tmp_path):
    tar, labels = source
    out = tmp_path / "data"
    summary = build_cars_data.build(tar, labels, out)
    heldout, train = sorted(NAMES[:6]), sorted(NAMES[6:])
    assert (summary["train"], summary["heldout"], summary["skipped"]) == (18, 6, [])
    assert sorted(p.name for p in (out / "images").iterdir()) == train
    assert sorted(p.name for p in (out / "heldout").iterdir()) == heldout
    assert (out / "heldout.txt").read_text().splitlines() == [f"heldout/{n}" for n in heldout]

    rows = {r["file"]: r for r in csv.DictReader(open(labels))}
    lines = (out / "attributes.txt").read_text().splitlines()
    assert lines[:2] == ["18", "is_suv is_convertible is_pickup is_sedan"]
    assert lines[2:] == [" ".join([n] + ["1" if rows[n][a] == "1" else "-1"
                                         for a in ("is_suv", "is_convertible", "is_pickup", "is_sedan")])
                         for n in train]
    assert "1" in " ".join(lines[2:]).split()  # positives present, so the comparison above can fail
    with tarfile.open(tar) as t:  # byte for byte
        assert (out / "images" / train[0]).read_bytes() == t.extractfile(f"cars128/{train[0]}").read()
    # The classifier reads the table as written.
    table = classifier_data.read_attribute_table(out / "attributes.txt", out / "images")
    assert table.attribute_names == build_cars_data.ATTRIBUTES and table.labels_NxK.shape == (18, 4)

    # A rebuild replaces the folder whole (nothing of an earlier build survives).
    (out / "images" / "stale.jpg").write_bytes(b"")
    build_cars_data.build(tar, labels, out)
    assert not (out / "images" / "stale.jpg").exists()


@pytest.mark.parametrize("extra,what", [
    (("../00001.jpg", b"x"), "'../00001.jpg' (a regular file)"),
    (("/tmp/00002.jpg", b"x"), "'/tmp/00002.jpg' (a regular file)"),
    (("cars128/../00003.jpg", b"x"), "'cars128/../00003.jpg' (a regular file)"),
    (("cars128/1.jpg", b"x"), "'cars128/1.jpg' (a regular file)"),
    (("cars128/00777.jpg", b"", tarfile.SYMTYPE, "/etc/passwd"), "'cars128/00777.jpg' (not a regular file)"),
    (("cars128/00778.jpg", b"", tarfile.LNKTYPE, "cars128/" + NAMES[0]), "'cars128/00778.jpg' (not a regular file)"),
    (("cars128/sub", b"", tarfile.DIRTYPE), "'cars128/sub' (not a regular file)"),
])
def test_hostile_members_refuse_the_whole_tar(tmp_path, extra, what):
    tar, labels = tmp_path / "cars.tar", tmp_path / "labels.csv"
    _write_tar(tar, NAMES, extra=[extra])
    _write_labels(labels, NAMES)
    with pytest.raises(FileFormatError) as e:
        build_cars_data.build(tar, labels, tmp_path / "data")
    assert str(e.value).startswith(f"{tar}: member {what}: only regular files named cars128/<5 digits>.jpg")
    assert sorted(tmp_path.iterdir()) == sorted([tar, labels])  # nothing written


def test_bad_input_is_one_line_naming_the_file(source, tmp_path, capsys):
    tar, labels = source

    def cli(*args):
        rc = build_cars_data.main(["--out", str(tmp_path / "data"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        return rc, err

    bad_labels = tmp_path / "bad.csv"
    _write_labels(bad_labels, NAMES, drop_column="is_pickup")
    assert cli("--tar", str(tar), "--labels", str(bad_labels)) == (
        2, [f"error: {bad_labels}: no column 'is_pickup' (expected labels.csv of the cars data)"])
    _write_labels(bad_labels, NAMES[1:])
    assert cli("--tar", str(tar), "--labels", str(bad_labels)) == (
        2, [f"error: {tar}: 1 images have no row in bad.csv, e.g. {NAMES[0]}"])
    not_tar = tmp_path / "not.tar"
    not_tar.write_bytes(b"\0garbage" * 10)
    rc, err = cli("--tar", str(not_tar), "--labels", str(labels))
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {not_tar}: ")

    # A corrupt image is one line naming the tar member, left out, recorded; the others go on.
    broken = tmp_path / "broken.tar"
    with tarfile.open(broken, "w") as t:
        for k, name in enumerate(NAMES):
            _add(t, f"cars128/{name}", b"not a jpeg" if name == NAMES[7] else _jpeg(_car(32, 12, k)))
    assert build_cars_data.main(["--tar", str(broken), "--labels", str(labels), "--out", str(tmp_path / "d2")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"skipped {broken}:cars128/{NAMES[7]}: unreadable or corrupt image")
    summary = json.loads((tmp_path / "d2" / "summary.json").read_text())
    assert summary["train"] == 17 and summary["skipped"][0]["image"] == f"cars128/{NAMES[7]}"
    assert not (tmp_path / "d2" / "images" / NAMES[7]).exists()


def test_examples_are_heldout_crops_spread_over_body_types(source, tmp_path):
    tar, labels = source
    folder = tmp_path / "examples" / "cars"
    picked = build_cars_data.write_examples(tar, labels, folder, 4)
    rows = {r["file"]: r for r in csv.DictReader(open(labels))}
    assert all(is_heldout(n, 0.1) for n in picked)
    assert len({rows[n]["body"] for n in picked}) == 4  # four body types for four examples
    assert picked == build_cars_data.write_examples(tar, labels, folder, 4)  # deterministic
    with tarfile.open(tar) as t:
        for n in picked:
            assert (folder / n).read_bytes() == t.extractfile(f"cars128/{n}").read()
    readme = (folder / "README.md").read_text()
    assert all(f"| `{n}` | {rows[n]['class_name']} | {rows[n]['body']} |" in readme for n in picked)
    assert sorted(p.name for p in folder.glob("*.jpg")) == sorted(picked)


def test_eval_scores_count_what_they_say():
    names = ("is_suv", "is_sedan")
    labels_NxK = np.asarray([[1, 0], [1, 0], [0, 1], [0, 0], [0, 1]], np.float32)  # the 4th: another body type
    logits_NxK = np.asarray([[2.0, -1.0], [-0.5, 0.3], [-1.0, 1.0], [0.2, -3.0], [1.0, 0.5]], np.float32)
    got = eval_cars_classifier.scores(logits_NxK, labels_NxK, names)
    suv, sedan = got["per_attribute"]["is_suv"], got["per_attribute"]["is_sedan"]
    assert (suv["accuracy"], suv["majority_accuracy"], suv["positives"]) == (0.4, 0.6, 2)
    assert (suv["recall"], suv["specificity"]) == (0.5, 1 / 3)
    assert (sedan["accuracy"], sedan["recall"], sedan["specificity"]) == (0.8, 1.0, 2 / 3)
    assert got["mean_accuracy"] == pytest.approx(0.6) and got["images"] == 5
    # AUC: suv positives 2.0, -0.5 against negatives -1.0, 0.2, 1.0: 2.0 beats 3, -0.5 beats 1 -> 4 of 6 pairs;
    # sedan positives 1.0, 0.5 beat every negative (-1.0, 0.3, -3.0)
    assert suv["auc"] == pytest.approx(4 / 6) and sedan["auc"] == 1.0
    assert eval_cars_classifier.auc(np.asarray([1.0, 1.0]), np.asarray([True, False])) == 0.5  # a tie is half
    # body: argmax over the 4 images of one listed type: right for the 1st and 3rd, wrong for the 2nd and 5th;
    # 2 suvs and 2 sedans, so always naming one type is right half the time
    assert (got["body_accuracy"], got["body_majority_accuracy"], got["body_images"]) == (0.5, 0.5, 4)

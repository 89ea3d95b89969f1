"""Hostile and huge images are bad input like any other (issue #22 item 5).

One folder, built here from code: a decompression bomb (a valid 27 KB PNG of 15000 x 15000 pixels), a truncated
PNG and JPEG, a text file named .png, a zero-byte file, an animated GIF and a multi-page TIFF (bad), and two
photographs with a 16-bit grey copy, a CMYK copy and an EXIF-rotated copy (good: the reading policy of
``magec_jax.images.open_image`` converts them). Every command that reads images is fed the folder: it
finishes, the good photographs are done, and every bad file is in its report with the reason.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image, ImageFile

import engine_standins as standins
from bundle_tools import TINY, tiny_generator
from conftest import REPO
from magec_jax import align as align_cli
from magec_jax import edit as edit_cli
from magec_jax import images as imio
from magec_jax.bundle import build_bundle
from magec_jax.classifier import data as classifier_data
from magec_jax.errors import BadImage
from magec_jax.faces import align
from magec_jax.inversion import job as job_lib
from magec_jax.training import data as training_data
from test_invert_job import make_config

GOOD = ("aaron.png", "rob.jpg", "grey16.png", "cmyk.jpg", "rotated.jpg")
BAD = {  # file -> what its one-line reason must say
    "bomb.png": "declares 225,000,000 pixels, over the pixel limit",
    "truncated.png": "truncated",
    "truncated_photo.jpg": "truncated",
    "text.png": "cannot identify image file",
    "empty.png": "cannot identify image file",
    "animated.gif": "animated GIF of 2 frames",
    "pages.tif": "multi-page TIFF of 2 frames",
}


def write_bomb(path: Path, side: int = 15000) -> None:
    """A valid 1-bit grey PNG of ``side`` x ``side`` black pixels, written chunk by chunk: the rows (28 MB of
    zeros at 15000 px) compress to about 27 KB, and no image object is made."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(bytes((1 + -(-side // 8)) * side), 9)  # each row: filter byte 0, then side bits
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, grey, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile") / "photos"
    folder.mkdir()
    shutil.copy(REPO / "examples" / "Aaron_Sorkin_0001.png", folder / "aaron.png")
    shutil.copy(REPO / "examples" / "Rob_Schneider_0001.jpg", folder / "rob.jpg")
    aaron, rob = (Image.fromarray(np.asarray(Image.open(folder / n).convert("RGB"))) for n in ("aaron.png", "rob.jpg"))
    grey = np.asarray(aaron.convert("L")).astype(np.uint16) * 257  # 16-bit: 8-bit grey scaled to 0..65535
    Image.fromarray(grey).save(folder / "grey16.png")
    rob.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: displayed after a quarter turn clockwise
    aaron.rotate(90, expand=True).save(folder / "rotated.jpg", exif=exif, quality=95)

    write_bomb(folder / "bomb.png")
    png, jpg = _encoded(aaron, "PNG"), _encoded(rob, "JPEG")
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "truncated_photo.jpg").write_bytes(jpg[: len(jpg) // 2])
    (folder / "text.png").write_text("this is not an image\n")
    (folder / "empty.png").write_bytes(b"")
    # (copies: saving a GIF leaves encoder settings on the images that would make the TIFF writer use libtiff)
    aaron.copy().save(folder / "animated.gif", save_all=True, append_images=[rob.copy()], duration=100, loop=0)
    aaron.copy().save(folder / "pages.tif", save_all=True, append_images=[rob.copy()])
    assert sorted(p.name for p in folder.iterdir()) == sorted([*GOOD, *BAD])
    return folder


def _assert_reported(entries) -> None:
    """Every bad file is reported once with its reason, and nothing else is."""
    reasons = {Path(e["image"]).name: e["reason"] for e in entries}
    assert set(reasons) == set(BAD) and len(entries) == len(BAD), reasons
    for name, expected in BAD.items():
        assert expected in reasons[name], (name, reasons[name])


# ---- the reading policy --------------------------------------------------------------------------------------


def test_bad_files_are_one_clear_error_and_good_ones_are_converted(hostile):
    assert imio.MAX_IMAGE_PIXELS == 1024 * 1024 * 1024 // 4 // 3  # Pillow's own warning threshold
    for name, expected in BAD.items():
        with pytest.raises(BadImage, match=expected) as err:
            imio.open_image(hostile / name)
        assert str(err.value).startswith(str(hostile / name)) and "\n" not in str(err.value)

    aaron = np.asarray(Image.open(hostile / "aaron.png").convert("RGB")).astype(np.int32)
    # 16-bit grey: scaled (v / 257), not clipped: exactly the 8-bit grey it was made from.
    grey16 = imio.open_image(hostile / "grey16.png")
    assert grey16.mode == "L"
    np.testing.assert_array_equal(np.asarray(grey16), np.asarray(Image.open(hostile / "aaron.png").convert("L")))
    ramp = Image.fromarray(np.array([[0, 128, 257, 32896, 65407, 65535]], np.uint16))
    assert np.asarray(imio.open_image(_encoded(ramp, "PNG"), name="ramp")).tolist() == [[0, 0, 1, 128, 255, 255]]
    # EXIF orientation applied: upright, equal to the photograph up to JPEG noise (sideways it is far off).
    rotated = np.asarray(imio.open_image(hostile / "rotated.jpg")).astype(np.int32)
    assert rotated.shape == aaron.shape and np.abs(rotated - aaron).mean() < 4
    assert np.abs(np.rot90(rotated, 1) - aaron).mean() > 20
    # CMYK: RGB, close to the photograph it was made from.
    cmyk = imio.open_image(hostile / "cmyk.jpg")
    rob = np.asarray(Image.open(hostile / "rob.jpg").convert("RGB")).astype(np.int32)
    assert cmyk.mode == "RGB" and np.abs(np.asarray(cmyk).astype(np.int32) - rob).mean() < 6


def test_the_bomb_is_refused_from_its_header_without_decoding(hostile, monkeypatch):
    def no_decoding(self, *args, **kwargs):
        raise AssertionError(f"pixels of {getattr(self, 'filename', '?')} were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    with pytest.raises(BadImage, match=r"declares 225,000,000 pixels, over the pixel limit of 89,478,485 "
                                       r"\(max_image_pixels\): refused unread"):
        imio.open_image(hostile / "bomb.png")
    # The limit is the setting, whatever Pillow's module-level one is, and a smaller one refuses a photograph
    # from its header too.
    with pytest.raises(BadImage, match=r"declares 16,384 pixels, over the pixel limit of 16,383 "):
        imio.load_image(hostile / "aaron.png", 8, max_pixels=128 * 128 - 1)
    monkeypatch.undo()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert imio.load_image(hostile / "aaron.png", 8).shape == (8, 8, 3)  # Pillow's 1000 does not apply
    assert Image.MAX_IMAGE_PIXELS == 1000  # and is left as it was


# ---- the commands ----------------------------------------------------------------------------------------------


def test_invert_job_records_every_bad_file_and_inverts_the_good_ones(hostile, tmp_path):
    out = tmp_path / "out"
    record = job_lib.run(make_config(hostile, out), networks=standins.networks())
    assert record["done"] == len(GOOD)
    assert sorted(p.stem for p in out.glob("*.npz")) == sorted(Path(n).stem for n in GOOD)
    summary = json.loads((out / "summary.json").read_text())
    _assert_reported(summary["skipped"])
    # Another pixel limit: finished results stay done (the limit is not in the fingerprint), even under a limit
    # that refuses their photographs now; the refused files are read again under each new limit (a skip holds
    # for the limit it was refused under) and refused again.
    for limit in (10**6, 100):
        again = job_lib.run(make_config(hostile, out, max_image_pixels=limit), networks=standins.networks())
        assert again["already_done"] == len(GOOD) and again["done"] == 0 and again["recomputed"] == 0
        assert again["skipped_earlier"] == 0 and {Path(s["image"]).name for s in again["skipped"]} == set(BAD)
    assert "over the pixel limit of 100 " in again["skipped"][0]["reason"]  # animated.gif, 128x128: refused unread
    same = job_lib.run(make_config(hostile, out, max_image_pixels=100), networks=standins.networks())
    assert same["skipped_earlier"] == len(BAD) and same["already_done"] == len(GOOD)


@pytest.fixture(scope="module")
def inverted(hostile, tmp_path_factory):
    """``python -m magec_jax.align`` (its ``run``) on the hostile folder into ``inv/aligned`` at the stand-ins'
    8 px, then the inversion job with ``align`` (stand-in networks, 5 + 5 steps), which finds every photograph
    aligned there already (one detector run for both)."""
    inv = tmp_path_factory.mktemp("hostile_invert") / "inv"
    align_lines: list[str] = []
    report = align_cli.run(hostile, inv / job_lib.ALIGNED, size=standins.RES, log=align_lines.append)
    record = job_lib.run(make_config(hostile, inv, align=True), networks=standins.networks())
    return dict(inv=inv, record=record, align_lines=align_lines, align_report=report)


def test_align_cli_records_every_bad_file_and_aligns_the_good_ones(inverted, hostile):
    out = inverted["inv"] / job_lib.ALIGNED
    summary = json.loads((out / "summary.json").read_text())
    _assert_reported(summary["unreadable"])
    assert not summary["no_face"] and not summary["skipped_faces"]
    assert {p.name.split("__face")[0] for p in out.glob("*.png")} == {Path(n).stem for n in GOOD}
    assert len([ln for ln in inverted["align_lines"] if ln.startswith("skipped ")]) == len(BAD)  # one line each
    # The rotated photograph was aligned upright: its face is where the upright photograph's is.
    upright, rotated = (align.Alignment.from_json(json.loads((out / f"{n}__face0.json").read_text()))
                        for n in ("aaron", "rotated"))
    np.testing.assert_allclose(rotated.points, upright.points, atol=2.0)


def test_invert_with_align_records_every_bad_file_and_pastes_the_good_ones(inverted, hostile):
    inv, record = inverted["inv"], inverted["record"]
    assert record["already_done"] == 0 and inverted["align_report"].detected == len(GOOD) + len(BAD)
    faces = sorted(p.stem for p in inv.glob("*.npz"))
    assert {f.split("__face")[0] for f in faces} == {Path(n).stem for n in GOOD} and record["done"] == len(faces)
    _assert_reported(json.loads((inv / "summary.json").read_text())["skipped"])
    assert sorted(p.stem for p in (inv / "pasted").glob("*.png")) == sorted(Path(n).stem for n in GOOD)
    with Image.open(inv / "pasted" / "rotated.png") as pasted, Image.open(hostile / "aaron.png") as upright:
        assert pasted.size == upright.size  # pasted into the photograph as it is displayed


def test_edit_cli_goes_on_past_bad_inputs_and_a_photograph_that_became_a_bomb(inverted, hostile, tmp_path, capsys):
    """``python -m magec_jax.edit --paste-back`` on latents of the job above (a tiny generator's, made up here)
    whose input crop is a hostile file or whose photograph was replaced by a bomb since."""
    direction = np.random.default_rng(2).standard_normal(TINY.w_dim).astype(np.float32)
    bundle = build_bundle(tmp_path / "bundle", generator=tiny_generator(tmp_path / "gen"),
                          directions={"Smiling": direction / np.linalg.norm(direction)}, w_avg_samples=100).path
    photos, latents = tmp_path / "photos", tmp_path / "latents"
    shutil.copytree(hostile, photos)
    latents.mkdir()
    rng = np.random.default_rng(3)
    for name, image in (("aaron__face0", None), ("rob__face0", None), ("cmyk__face0", "pages.tif")):
        record = json.loads((inverted["inv"] / f"{name}.json").read_text())
        record["photo"] = str(photos / Path(record["photo"]).name)
        if image is not None:  # its input crop is now a multi-page TIFF: a grey tile in the grid, one line
            record["image"] = str(photos / image)
        (latents / f"{name}.json").write_text(json.dumps(record))
        np.savez(latents / f"{name}.npz", w=rng.standard_normal((1, TINY.num_ws, TINY.w_dim)).astype(np.float32))
    write_bomb(photos / "rob.jpg")  # replaced since it was inverted
    out = tmp_path / "edits"
    argv = [str(latents), "--bundle", str(bundle), "--out", str(out), "--attribute", "Smiling",
            "--strengths", "3", "--paste-back", "--max-image-pixels", str(10**6)]
    assert edit_cli.main(argv) == 0
    for name in ("aaron__face0", "cmyk__face0"):
        assert json.loads((out / f"{name}.json").read_text())["pasted"] == f"{name}/<label>.png"
        assert (out / name / "ifg_Smiling_+3.png").is_file()
    assert json.loads((out / "rob__face0.json").read_text())["pasted"] is None
    assert (out / "rob__face0.png").is_file()  # its edit grid is rendered all the same
    err = capsys.readouterr().err.splitlines()
    [bomb] = [ln for ln in err if "rob.jpg" in ln]
    assert bomb.startswith("not pasted rob__face0: ") and "over the pixel limit of 1,000,000" in bomb
    [tiff] = [ln for ln in err if "pages.tif" in ln]
    assert "multi-page TIFF of 2 frames" in tiff and tiff.endswith("showing a grey tile")


def test_evaluation_reads_skip_and_report_every_bad_file(hostile, tmp_path):
    """The evaluation's own reads (descriptor F on the real images) and its methods' inversion jobs, on the
    stand-in networks: the bad files are reported, skipped and listed in ``results.json``'s ``skipped``."""
    from magec_jax.configdicts import from_configdict
    from magec_jax.evaluation.config import EvalConfig
    from magec_jax.evaluation.pipeline import Evaluator
    from magec_jax.evaluation.report import skipped_images

    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_tiny", REPO / "configs" / "eval_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("ifg")
    config.update(dict(bundle="unused", images=str(hostile), out_dir=str(tmp_path / "eval"), max_image_pixels=10**6))
    cfg = from_configdict(EvalConfig, config)
    nets = standins.networks()
    lines: list[str] = []
    ev = Evaluator.__new__(Evaluator)  # the networks and layout only: no bundle to load
    ev.cfg, ev.nets, ev.log, ev.out, ev.framing = cfg, nets, lines.append, Path(cfg.out_dir), "square"
    ev._logits = jax.jit(nets.descriptor.apply)
    real = ev.real_images()
    assert sorted(real.logits) == sorted(Path(n).stem for n in GOOD)
    assert len([ln for ln in lines if ln.startswith("skipped ")]) == len(BAD)
    method = cfg.method_specs[0]
    job = ev.job_config(method, real.list_file, ev.inversions(method), method.name)
    assert job.max_image_pixels == 10**6
    record = job_lib.run(job, networks=nets, log=lines.append)
    assert record["done"] == len(GOOD)
    reported = skipped_images(ev)
    _assert_reported(reported)
    assert all("1,000,000" in e["reason"] for e in reported if e["image"].endswith("bomb.png"))


def test_training_data_skips_and_counts_every_bad_file(hostile, tmp_path):
    source = tmp_path / "people"
    for i, name in enumerate(sorted([*GOOD, *BAD])):  # <Person>/<image>, as LFW
        (source / f"Person_{i % 3}").mkdir(parents=True, exist_ok=True)
        shutil.copy(hostile / name, source / f"Person_{i % 3}" / name)
    lines: list[str] = []
    faces = training_data.load_faces(source, 16, crop=128, cache_dir=tmp_path / "cache", log=lines.append)
    assert sorted(Path(p).name for p in faces.paths) == sorted(GOOD)
    assert faces.images_NxHxWx3.shape == (len(GOOD), 16, 16, 3)
    _assert_reported(faces.skipped)
    assert len([ln for ln in lines if ln.startswith("skipped ")]) == len(BAD)
    assert f"{len(BAD)} of {len(GOOD) + len(BAD)} images" in lines[-1]
    cached = training_data.load_faces(source, 16, crop=128, cache_dir=tmp_path / "cache", log=pytest.fail)
    np.testing.assert_array_equal(cached.images_NxHxWx3, faces.images_NxHxWx3)
    assert cached.skipped == faces.skipped and cached.paths == faces.paths

    # The classifier's loader: an unusable image's row holds a usable one of its batch, with that one's labels.
    paths = tuple(source / p for p in training_data.list_source(source))
    loader = classifier_data.Loader(paths, 16, 2, log=lines.append)
    labels = np.arange(len(paths), dtype=np.float32)[:, None]
    usable = [i for i, p in enumerate(paths) if p.name in GOOD]
    for step, images, batch_labels, _ in classifier_data.train_batches(
            loader, np.arange(len(paths)), labels, _classifier_cfg(), 0, 6):
        assert images.shape == (4, 16, 16, 3) and np.isfinite(images).all()
        assert set(batch_labels[:, 0].astype(int)) <= set(usable)
    loader.close()
    _assert_reported(loader.skipped_images())


def _classifier_cfg():
    from magec_jax.classifier.config import TrainConfig

    return TrainConfig(images="x", attributes="x", out_dir="x", batch_size=4, flip=False)

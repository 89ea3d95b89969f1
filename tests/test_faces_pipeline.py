"""Photographs in and out (issue 12): the align CLI, templates in bundles, the inversion job with ``align``,
pasted photographs, and ``magec_jax.edit --paste-back``; on the ``face_landmarks`` fixture's photographs.

Tolerances:
* Template recovery: 1 crop pixel at 128 px. Crops aligned to a known template are detected again and their
  points averaged; the detector agrees with the reference to about a photograph pixel (its fixture's bound),
  which is a quarter of a crop pixel or less here, and averaging over the faces does not add to it.
* Upright: the eye line of a re-detected aligned crop within 3 degrees of level (the face's own FFHQ
  horizontal, which mixes in the eye-to-mouth normal, differs from the eye line by about that much).
* Paste-back of a re-rendered reconstruction: 1 grey level (the PNG's own rounding).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import engine_standins as standins
from bundle_tools import TINY, tiny_generator
from conftest import require_shared
from magec_jax import align as align_cli
from magec_jax import edit as edit_cli
from magec_jax import invert as invert_cli
from magec_jax.bundle import build_bundle, load_bundle, set_template
from magec_jax.errors import MagecError
from magec_jax.faces import align, pipeline
from magec_jax.faces.detect import FaceDetector
from magec_jax.inversion import job as job_lib
from magec_jax.inversion.protocols import job_config
from test_invert_job import make_config


@pytest.fixture(scope="module")
def photos():
    """The fixture's photographs by name, uint8 RGB."""
    cases = np.load(require_shared("fixtures", "face_landmarks", "cases.npz"))
    return {k.split("/", 1)[1]: cases[k] for k in cases.files if k.startswith("image/")}


@pytest.fixture(scope="module")
def detector():
    return FaceDetector.load()


def _write(folder: Path, photos: dict, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(photos[name]).save(folder / f"{name}.png")


def _eye_angle(points_4x2: np.ndarray) -> float:
    """The eye line's angle to the horizontal, in degrees."""
    dx, dy = points_4x2[1] - points_4x2[0]
    return float(np.degrees(np.arctan2(dy, dx)))


# ---- the align CLI -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aligned(photos, tmp_path_factory):
    """``python -m magec_jax.align SRC --out OUT --size 512`` on five photographs, a grey one in a subfolder,
    a transparent RGBA one and an unreadable file."""
    root = tmp_path_factory.mktemp("align")
    src, out = root / "photos", root / "aligned"
    _write(src, photos, ["twofaces_500x250", "noface_320x240", "rotated25_celeba_female_030321"])
    (src / "people").mkdir()
    Image.fromarray(photos["gray_Nestor_Kirchner_0022"][:, :, 0]).save(src / "people" / "grey.png")
    rgba = np.concatenate([photos["lfw_Jessica_Alba_0002"], np.full((250, 250, 1), 255, np.uint8)], axis=2)
    rgba[:5, :5, 3] = 0
    Image.fromarray(rgba).save(src / "transparent.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    assert align_cli.main([str(src), "--out", str(out), "--size", "512"]) == 0
    return src, out


@pytest.mark.slow
def test_align_cli_writes_each_face_and_its_record(aligned, photos):
    src, out = aligned
    faces = sorted(p.name for p in out.glob("*.png"))
    assert faces == ["people__grey__face0.png", "rotated25_celeba_female_030321__face0.png",
                     "twofaces_500x250__face1.png", "twofaces_500x250__face2.png"]
    for name in faces:
        record = json.loads((out / name).with_suffix(".json").read_text())
        assert set(record["landmarks"]) == {"eye_left", "eye_right", "mouth_left", "mouth_right"}
        alignment = align.Alignment.from_json(record)
        # The quad is NVIDIA's FFHQ quad of the landmarks, and the PNG is exactly that crop of the photograph.
        np.testing.assert_allclose(alignment.quad, align.ffhq_quad(alignment.points), atol=1e-9)
        assert record["output_size"] == 512 and 0.5 < record["score"] <= 1.0
        photo = pipeline.read_photo(record["image"])
        assert record["photo_size"] == [photo.shape[1], photo.shape[0]]
        crop = np.asarray(Image.open(out / name))
        np.testing.assert_array_equal(crop, align.warp(photo, alignment, align.adaptive_transform_size(alignment)))
    # Two people: two faces, numbered from the left (face0, the small background face, is reported below).
    left, right = (json.loads((out / f"twofaces_500x250__face{j}.json").read_text()) for j in (1, 2))
    assert left["landmarks"]["eye_left"][0] < 250 < right["landmarks"]["eye_left"][0]
    # A grey photograph gives a grey crop.
    grey = np.asarray(Image.open(out / "people__grey__face0.png")).astype(np.int32)
    assert np.abs(grey - grey[:, :, :1]).max() == 0


@pytest.mark.slow
def test_align_cli_summary_names_what_was_skipped_and_why(aligned):
    src, out = aligned
    summary = json.loads((out / "summary.json").read_text())
    assert summary["framing"] == {"kind": "ffhq", "size": 512} and summary["faces"] == 4
    assert summary["no_face"] == [dict(image=str(src / "noface_320x240.png"), reason="no face found")]
    unreadable = {Path(e["image"]).name: e["reason"] for e in summary["unreadable"]}
    assert set(unreadable) == {"broken.jpg", "transparent.png"}
    assert "unreadable" in unreadable["broken.jpg"] and "transparent pixels" in unreadable["transparent.png"]
    [small] = summary["skipped_faces"]
    assert small["face"] == "twofaces_500x250__face0"
    side = float(small["reason"].split("quad side ")[1].split(" px")[0])
    assert 60 < side < 110 and "512 px crop" in small["reason"]  # the background face, about 90 px


@pytest.mark.slow
def test_align_cli_aligns_a_rotated_face_upright(aligned, photos, detector):
    _, out = aligned
    record = json.loads((out / "rotated25_celeba_female_030321__face0.json").read_text())
    points = np.array([record["landmarks"][k] for k in align.FACE_POINTS])
    assert abs(_eye_angle(points)) > 20  # tilted in the photograph
    [[found]] = detector.detect([np.asarray(Image.open(out / "rotated25_celeba_female_030321__face0.png"))])
    assert abs(_eye_angle(found.points_4x2)) < 3  # level in the crop
    assert found.points_4x2[2:, 1].mean() > found.points_4x2[:2, 1].mean()  # mouth below the eyes


@pytest.mark.slow
def test_align_cli_rerun_detects_nothing_and_rewrites_nothing(aligned, monkeypatch):
    src, out = aligned
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "summary.json"}

    def no_detector(*args, **kwargs):
        raise AssertionError("the detector was loaded for a finished folder")

    monkeypatch.setattr(FaceDetector, "load", no_detector)
    assert align_cli.main([str(src), "--out", str(out), "--size", "512"]) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "summary.json"}


def test_face_too_small_is_reported_with_its_size(photos, detector, tmp_path):
    _write(tmp_path / "in", photos, ["smallface_640x480"])
    listed, _ = pipeline.list_photos(tmp_path / "in")
    big = pipeline.align_photos(listed, tmp_path / "big", pipeline.Framing.ffhq(1024), detector=detector)
    assert not big.faces
    [skip] = big.skipped
    assert skip["face"] == "smallface_640x480__face0" and skip["reason"].startswith("face too small: quad side 1")
    assert "1024 px crop; at least 256 px" in skip["reason"]
    small = pipeline.align_photos(listed, tmp_path / "small", pipeline.Framing.ffhq(256), detector=detector)
    assert [f.name for f in small.faces] == ["smallface_640x480__face0"] and not small.skipped


@pytest.mark.parametrize("argv", [["--size", "0"], ["--size", "64", "--bundle", "b"], ["--fit-template", "b", "x"],
                                  []])
def test_align_cli_usage_errors_exit_2(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        align_cli.main(([str(tmp_path), "--out", str(tmp_path / "o")] if argv and argv[0] != "--fit-template"
                        else []) + argv)
    assert e.value.code == 2
    assert "python -m magec_jax.align: error:" in capsys.readouterr().err


def test_align_cli_missing_source_is_one_line(tmp_path, capsys):
    assert align_cli.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'nowhere'}: no such folder or list file"
    assert not (tmp_path / "o").exists()


# ---- templates ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fitted_template_reads_back_where_the_alignment_put_the_points(photos, detector):
    """Faces aligned to a template (least squares, so each face's points land near, not on, the template's),
    fitted again: the fit is the mean of where the alignments put each face's points in its crop."""
    names = ["celeba_female_015248", "celeba_female_042373", "celeba_male_036367", "celeba_male_020167",
             "rotated25_celeba_female_030321", "lfw_Adrien_Brody_0007", "lfw_Jessica_Alba_0002"]
    found = detector.detect([photos[n] for n in names])
    template = align.Template(128, (44.0, 52.0), (84.0, 53.0), (49.0, 92.0), (80.0, 92.5))
    alignments = [align.Alignment.to_template(f[0].points_4x2, template) for f in found]
    crops = np.stack([align.warp(photos[n], a) for n, a in zip(names, alignments, strict=True)])
    fit = pipeline.fit_template_on_images(crops, detector)
    assert fit.found == fit.images == len(names) and fit.template.size == 128
    expected = np.mean([a.points_in_crop() for a in alignments], axis=0)
    np.testing.assert_allclose(fit.template.points(), expected, atol=1.0)
    assert np.abs(expected - template.points()).max() > 1.0  # so the test tells the two apart


def test_template_fit_without_faces_is_one_line(photos, detector):
    field = photos["noface_320x240"]  # a smooth random colour field
    squares = np.stack([np.asarray(Image.fromarray(field[:, x:x + 240]).resize((32, 32))) for x in (0, 40, 80)])
    with pytest.raises(MagecError, match="no face found in any of the 3 images"):
        pipeline.fit_template_on_images(squares, detector)


@pytest.mark.slow
def test_bundle_framing_and_the_fit_template_cli(photos, detector, tmp_path):
    bundle = build_bundle(tmp_path / "bundle", generator=tiny_generator(tmp_path / "gen"), w_avg_samples=100).path
    assert load_bundle(bundle).framing() == pipeline.Framing.ffhq(TINY.img_resolution)  # none recorded: FFHQ
    # Training images framed alike (aligned to a template at 256 px): --fit-template --images reads the framing
    # back from them at the generator's 32 px and stores it in the bundle.
    template = align.Template(256, (92.0, 108.0), (164.0, 108.0), (100.0, 188.0), (156.0, 188.0))
    names = ["celeba_female_015248", "celeba_male_036367", "lfw_Jessica_Alba_0002"]
    alignments = [align.Alignment.to_template(f[0].points_4x2, template)
                  for f in detector.detect([photos[n] for n in names])]
    train = tmp_path / "train"
    train.mkdir()
    for name, a in zip(names, alignments, strict=True):
        Image.fromarray(align.warp(photos[name], a)).save(train / f"{name}.png")
    assert align_cli.main(["--fit-template", str(bundle), "--images", str(train)]) == 0
    loaded = load_bundle(bundle)
    assert loaded.manifest["framing"] == "template" and (bundle / "template.json").is_file()
    expected = np.mean([(a.points_in_crop() + 0.5) / 8 - 0.5 for a in alignments], axis=0)  # 256 -> 32 px
    np.testing.assert_allclose(loaded.framing().template.points(), expected, atol=0.5)
    truth = loaded.framing().template
    with pytest.raises(MagecError, match="64 px crops; the generator makes 32 px"):
        set_template(bundle, align.Template.from_points(64, truth.points() * 2))


# ---- the inversion job with align --------------------------------------------------------------------------


def _outside_every_quad(shape: tuple[int, ...], alignments: list[align.Alignment]) -> np.ndarray:
    ys, xs = np.mgrid[:shape[0], :shape[1]]
    outside = np.ones(shape[:2], bool)
    for a in alignments:
        lo, hi = np.min(a.quad, axis=0) - 1, np.max(a.quad, axis=0) + 1
        outside &= ~((xs >= lo[0]) & (xs <= hi[0]) & (ys >= lo[1]) & (ys <= hi[1]))
    return outside


def test_job_with_align_inverts_each_face_and_pastes_them_back(photos, tmp_path, monkeypatch):
    folder, out = tmp_path / "in", tmp_path / "out"
    _write(folder, photos, ["twofaces_500x250", "noface_320x240"])
    Image.fromarray(photos["gray_Nestor_Kirchner_0022"][:, :, 0]).save(folder / "grey.png")
    opaque = np.concatenate([photos["lfw_Jessica_Alba_0002"], np.full((250, 250, 1), 255, np.uint8)], axis=2)
    Image.fromarray(opaque).save(folder / "rgba.png")
    config = make_config(folder, out, align=True)
    record = job_lib.run(config, networks=standins.networks())

    names = sorted(p.stem for p in out.glob("*.npz"))
    assert names == ["grey__face0", "rgba__face0", "twofaces_500x250__face0", "twofaces_500x250__face1",
                     "twofaces_500x250__face2"]  # at 8 px the background face is large enough
    assert record["done"] == 5
    assert [(Path(s["image"]).name, s["reason"]) for s in record["skipped"]] == [("noface_320x240.png",
                                                                                   "no face found")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fingerprint"]["preprocessing"]["align"]["framing"] == {"kind": "ffhq", "size": standins.RES}
    item = json.loads((out / "twofaces_500x250__face2.json").read_text())
    assert item["photo"] == str(folder / "twofaces_500x250.png") and item["face"] == 2
    assert item["image"] == str(out / "aligned" / "twofaces_500x250__face2.png")
    alignment = align.Alignment.from_json(item["alignment"])
    assert alignment.output_size == standins.RES and alignment.points[0][0] > 250  # the face on the right

    # pasted/<photo>.png: the photograph at its own size and mode, changed only where faces were pasted.
    for photo_name, mode in (("twofaces_500x250", "RGB"), ("grey", "L"), ("rgba", "RGBA")):
        source = pipeline.read_photo(folder / f"{photo_name}.png")
        with Image.open(out / "pasted" / f"{photo_name}.png") as im:
            assert im.mode == mode
            pasted = np.asarray(im)
        assert pasted.shape == source.shape
        face_alignments = [align.Alignment.from_json(json.loads(p.read_text())["alignment"])
                           for p in out.glob(f"{photo_name}__face*.json")]
        outside = _outside_every_quad(source.shape, face_alignments)
        np.testing.assert_array_equal(pasted[outside], source[outside])
        assert np.abs(pasted.astype(np.int32) - source).max() > 20  # the reconstructions were pasted
    assert not (out / "pasted" / "noface_320x240.png").exists()

    # A rerun inverts, aligns and pastes nothing.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "summary.json"}
    again = job_lib.run(config, networks=standins.networks())
    assert again["done"] == 0 and again["already_done"] == 5
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "summary.json"}

    # Other alignment settings: refused in one line before anything is detected or aligned again.
    settings = pipeline.alignment_settings

    def other_settings(framing, detector=pipeline.DetectorConfig()):
        return dict(settings(framing, detector), min_quad_fraction=0.5)

    monkeypatch.setattr(pipeline, "alignment_settings", other_settings)
    monkeypatch.setattr(FaceDetector, "load", lambda *a, **k: pytest.fail("the detector was loaded"))
    with pytest.raises(MagecError, match=r"5 result\(s\) there were computed otherwise \(preprocessing.align."
                                         r"min_quad_fraction: 0.25 -> 0.5\)"):
        job_lib.run(config, networks=standins.networks())
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "summary.json"}


# ---- a tiny bundle with a template: the edit stage and edit --paste-back -----------------------------------


@pytest.fixture(scope="module")
def inverted_photos(photos, tmp_path_factory):
    """A generator-only tiny bundle with a template and two directions, and an Image2StyleGAN++ job with
    ``align`` and an edit grid on two photographs (one face, two faces)."""
    root = tmp_path_factory.mktemp("paste")
    rng = np.random.default_rng(1)
    dirs = rng.standard_normal((2, TINY.w_dim)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    bundle = build_bundle(root / "bundle", generator=tiny_generator(root / "gen"),
                          directions={"Smiling": dirs[0], "Male": dirs[1]}, w_avg_samples=200).path
    set_template(bundle, align.Template(32, (11.0, 13.0), (21.0, 13.0), (12.0, 23.0), (20.0, 23.0)))
    _write(root / "photos", photos, ["lfw_Jessica_Alba_0002", "twofaces_500x250"])
    config = job_config("i2spp", steps_scale=0.005)  # 5 w+ steps, then 5 noise steps
    config.bundle, config.images, config.out_dir = str(bundle), str(root / "photos"), str(root / "inv")
    config.batch_size, config.align = 4, True
    config.inversion.chunk_steps = 5
    config.edit_grid.attributes, config.edit_grid.strengths = ("Smiling",), (0.0, 3.0)
    record = invert_cli.run(config)
    assert record["done"] == 4
    return dict(root=root, bundle=bundle, photos=root / "photos", inv=root / "inv")


@pytest.mark.slow
def test_job_edit_stage_pastes_every_face_edited_alike(inverted_photos):
    inv, photos = inverted_photos["inv"], inverted_photos["photos"]
    item = json.loads((inv / "twofaces_500x250__face1.json").read_text())
    assert item["alignment"]["output_size"] == 32  # the bundle's template framing
    for photo_name in ("lfw_Jessica_Alba_0002", "twofaces_500x250"):
        source = pipeline.read_photo(photos / f"{photo_name}.png")
        recon = np.asarray(Image.open(inv / "pasted" / f"{photo_name}.png")).astype(np.int32)
        zero = np.asarray(Image.open(inv / "pasted" / f"{photo_name}__ifg_Smiling_+0.png")).astype(np.int32)
        edited = np.asarray(Image.open(inv / "pasted" / f"{photo_name}__ifg_Smiling_+3.png")).astype(np.int32)
        assert zero.shape == edited.shape == source.shape
        assert np.abs(zero - recon).max() <= 1  # strength 0 is the reconstruction
        face_alignments = [align.Alignment.from_json(json.loads(p.read_text())["alignment"])
                           for p in inv.glob(f"{photo_name}__face*.json")]
        outside = _outside_every_quad(source.shape, face_alignments)
        np.testing.assert_array_equal(edited[outside], source[outside])
        for a in face_alignments:  # every face of the photograph is edited
            (x0, y0), (x1, y1) = np.min(a.quad, 0).astype(int), np.max(a.quad, 0).astype(int)
            region = (slice(max(y0, 0), y1), slice(max(x0, 0), x1))
            assert np.abs(edited[region] - recon[region]).max() > 10


@pytest.mark.slow
def test_edit_cli_paste_back_renders_the_edit_into_the_photograph(inverted_photos, tmp_path):
    inv, bundle = inverted_photos["inv"], inverted_photos["bundle"]
    out = tmp_path / "edits"
    latent = inv / "lfw_Jessica_Alba_0002__face0.npz"
    argv = [str(latent), "--bundle", str(bundle), "--out", str(out), "--attribute", "Smiling",
            "--strengths", "0,3", "--paste-back"]
    assert edit_cli.main(argv) == 0
    record = json.loads((out / "lfw_Jessica_Alba_0002__face0.json").read_text())
    assert record["pasted"] == "lfw_Jessica_Alba_0002__face0/<label>.png"
    zero = np.asarray(Image.open(out / "lfw_Jessica_Alba_0002__face0" / "ifg_Smiling_+0.png")).astype(np.int32)
    plus = np.asarray(Image.open(out / "lfw_Jessica_Alba_0002__face0" / "ifg_Smiling_+3.png")).astype(np.int32)
    job_pasted = np.asarray(Image.open(inv / "pasted" / "lfw_Jessica_Alba_0002.png"))
    assert zero.shape == (250, 250, 3)
    assert np.abs(zero - job_pasted).max() <= 1
    assert np.abs(plus - zero).max() > 10
    # Without --paste-back's records: one line naming the file.
    plain = tmp_path / "plain"
    plain.mkdir()
    with np.load(latent) as z:
        np.savez(plain / "x.npz", **{k: z[k] for k in z.files})
    assert edit_cli.main([str(plain / "x.npz")] + argv[1:]) == 2


@pytest.mark.slow
def test_bundle_with_an_unknown_framing_is_one_line(inverted_photos, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(inverted_photos["bundle"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["framing"] = "celeba"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MagecError, match="framing 'celeba' must be 'ffhq' or 'template'"):
        load_bundle(copy).framing()
    os.remove(copy / "template.json")
    with pytest.raises(MagecError, match="template.json: named in the bundle manifest but missing"):
        load_bundle(copy)

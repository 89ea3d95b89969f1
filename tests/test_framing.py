"""Framing images as a generator's data was (``images.frame``), and held-out groups other than people."""

import numpy as np
import pytest
from PIL import Image

from magec_jax.images import content_mask, frame
from magec_jax.training import data as data_lib


def _image(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(w * 1000 + h)
    return Image.fromarray(rng.integers(1, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size,box", [((128, 64), (0, 16, 64, 48)), ((60, 128), (17, 0, 47, 64)),
                                      ((300, 100), (0, 21, 64, 42)), ((64, 64), (0, 0, 64, 64))])
def test_letterbox_keeps_the_whole_image_centred_on_black(size, box):
    pixels, got = frame(_image(*size), 64, "letterbox")
    assert got == box and pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    mask = content_mask(got, 64).astype(bool)
    assert (pixels[~mask] == 0).all()
    assert (pixels[mask].max(axis=-1) > 0).mean() > 0.99  # the picture fills its box (no pixel is 0 in it)
    left, top, right, bottom = got
    expected = np.asarray(_image(*size).resize((right - left, bottom - top), Image.LANCZOS))
    np.testing.assert_array_equal(pixels[top:bottom, left:right], expected)


def test_square_framing_is_the_central_crop():
    img = _image(100, 80)
    pixels, box = frame(img, 40, "square")
    assert box == (0, 0, 40, 40)
    np.testing.assert_array_equal(pixels, np.asarray(img.crop((10, 0, 90, 80)).resize((40, 40), Image.LANCZOS)))
    small, _ = frame(img, 40, "square", crop=40)
    np.testing.assert_array_equal(small, np.asarray(img.crop((30, 20, 70, 60))))
    with pytest.raises(ValueError, match="unknown framing 'stretch'"):
        frame(img, 40, "stretch")


def test_heldout_by_file_splits_a_single_folder_data_set():
    paths = [f"cars128/{i:05d}.jpg" for i in range(1, 2001)]
    assert len(data_lib.split_by_person(paths)[1]) in (0, len(paths))  # by folder: all or nothing
    train, heldout = data_lib.split_by_person(paths, by="file")
    assert 0.08 < len(heldout) / len(paths) < 0.12 and len(train) + len(heldout) == len(paths)
    names = data_lib.heldout_people(paths, by="file")
    assert names == sorted(paths[i].split("/")[1] for i in heldout)
    with pytest.raises(ValueError, match="unknown held-out unit"):
        data_lib.group_of(paths[0], "make")


# ---- non-face bundles in the job: letterboxed inputs, losses on the content area, no face alignment -----------


def _letterboxed_engine_inputs():
    import engine_standins as standins
    from magec_jax.inversion.engine import Engine
    from magec_jax.inversion.settings import InversionSettings, Phase

    nets = standins.networks()
    engine = Engine(nets, InversionSettings(phases=(Phase(2, mse=1.0, lpips=1.0, id=0.1),), chunk_steps=1))
    targets = standins.targets(2)
    masks = np.stack([content_mask((0, 2, 8, 6), 8), content_mask((1, 0, 7, 8), 8)])
    latents = np.random.default_rng(3).standard_normal((2, standins.NUM_WS, standins.W_DIM)).astype(np.float32)
    return engine, targets, masks, latents


def test_content_masks_restrict_the_pixel_losses_to_the_content_area():
    engine, targets, masks, latents = _letterboxed_engine_inputs()
    columns = [engine.term_names.index(t) for t in ("mse", "lpips")]
    plain = np.asarray(engine.evaluate(latents, targets)["terms"])
    ones = np.asarray(engine.evaluate(latents, targets, np.ones_like(masks))["terms"])
    np.testing.assert_array_equal(ones, plain)  # a mask of ones changes nothing, to the bit
    masked = engine.evaluate(latents, targets, masks)
    # MSE by hand: the squared error inside the box, over every pixel of the frame.
    rendered = np.asarray(engine.evaluate(latents, targets)["images"])
    by_hand = np.mean(np.square(rendered - targets) * masks[..., None], axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(masked["terms"])[:, columns[0]], by_hand, rtol=1e-5)
    # Whatever the target holds on the bands, the pixel terms do not change (the bands add nothing).
    other = np.where(masks[..., None] > 0, targets, np.float32(-1.0))
    again = np.asarray(engine.evaluate(latents, other, masks)["terms"])
    np.testing.assert_allclose(again[:, columns], np.asarray(masked["terms"])[:, columns], rtol=1e-6, atol=1e-7)
    assert not np.allclose(np.asarray(masked["terms"])[:, columns], plain[:, columns])


def test_job_letterboxes_and_masks_the_bands(tmp_path):
    import json

    import engine_standins as standins
    from magec_jax.inversion import job as job_lib
    from magec_jax.inversion.protocols import job_config

    (tmp_path / "in").mkdir()
    wide = to_uint8_image(standins.targets(1)[0])[2:6]  # an 8x4 picture
    Image.fromarray(np.kron(wide, np.ones((2, 2, 1), np.uint8))).save(tmp_path / "in" / "car.png")  # 16x8
    config = job_config("wo_magec", steps_scale=0.02)
    config.images, config.out_dir, config.batch_size = str(tmp_path / "in"), str(tmp_path / "out"), 1
    config.framing = "letterbox"
    nets = standins.networks()
    job_lib.run(config, networks=nets)
    record = json.loads((tmp_path / "out" / "car.json").read_text())
    pre = record["fingerprint"]["preprocessing"]
    assert pre["crop"] == "letterbox" and pre["loss_area"] == "content"
    from magec_jax.images import load_framed

    target, box = load_framed(tmp_path / "in" / "car.png", 8, framing="letterbox")
    assert box == (0, 2, 8, 6) and (target[:2] == -1).all()  # black bands above and below
    with np.load(tmp_path / "out" / "car.npz") as z:
        rendered = np.asarray(nets.synthesize(nets.generator, z["w"], None))[0]
    mask = content_mask(box, 8)[..., None]
    assert record["losses"]["mse"] == pytest.approx(float(np.mean(np.square(rendered - target) * mask)), rel=1e-5)
    # The loss area is part of the fingerprint: the whole-frame setting is another result.
    config.mask_bands = False
    with pytest.raises(Exception, match="loss_area: 'content' -> 'whole frame'"):
        job_lib.run(config, networks=nets)
    assert job_lib.image_framing(job_lib.JobConfig(**{**_job_fields(config), "framing": ""})) == "square"


def _job_fields(config) -> dict:
    from magec_jax.configdicts import from_configdict
    from magec_jax.inversion.job import JobConfig
    import dataclasses

    return {f.name: getattr(from_configdict(JobConfig, config), f.name) for f in dataclasses.fields(JobConfig)}


def to_uint8_image(img: np.ndarray) -> np.ndarray:
    from magec_jax.images import to_uint8

    return to_uint8(img)


def test_a_non_face_bundle_frames_as_its_data_and_never_aligns(tmp_path):
    from bundle_tools import tiny_generator
    from magec_jax.bundle import Bundle, build_bundle, load_bundle
    from magec_jax.errors import FileFormatError, MagecError
    from magec_jax.inversion import job as job_lib
    from magec_jax.inversion.protocols import job_config

    gen = tiny_generator(tmp_path / "generator")
    cars = build_bundle(tmp_path / "cars", generator=gen, domain="cars", framing="letterbox", w_avg_samples=100,
                        identity=("vgg16_relu5_3", None))
    assert load_bundle(cars.path).domain == "cars" and cars.image_framing() == "letterbox"
    # Its ID network: ImageNet VGG16's pooled relu5_3 (the LPIPS weights' trunk), unit length.
    identity = cars.identity()
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    emb = np.asarray(identity(images))
    from magec_jax.evaluation.features import substitute_extractor
    from ports.loss_nets import packaged_lpips

    pooled = np.asarray(substitute_extractor(packaged_lpips()).apply(identity.variables, images))
    np.testing.assert_allclose(emb, pooled / np.linalg.norm(pooled, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert identity.name == "vgg16_relu5_3" and 0 < float(emb[0] @ emb[1]) < 1
    config = job_config("wo_magec")
    config.bundle, config.images, config.out_dir = str(cars.path), str(tmp_path), str(tmp_path / "out")
    assert job_lib.image_framing(job_lib.JobConfig(**_job_fields(config)), cars) == "letterbox"
    config.align = True
    with pytest.raises(MagecError, match=r"a 'cars' bundle framed 'letterbox': photographs are aligned only for "
                                         r"face bundles") as e:
        job_lib.run(config, bundle=cars)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()
    with pytest.raises(MagecError, match="framing 'ffhq' of a 'cars' bundle must be one of square, letterbox"):
        build_bundle(tmp_path / "bad", generator=gen, domain="cars", framing="ffhq")
    for manifest, problem in (({"domain": "cars", "framing": "template"}, "framing 'template' of a 'cars' bundle"),
                              ({"domain": 3}, "domain must be a name")):
        with pytest.raises(FileFormatError, match=problem):
            Bundle(tmp_path, manifest).image_framing()
    # A descriptor trained by train_classifier brings its attribute names and input size into the manifest.
    import jax
    import jax.numpy as jnp

    from magec_jax.models import resnet
    from magec_jax.weights import Converted, save_converted

    names = ("is_suv", "is_pickup")
    variables = resnet.ResNet50(num_classes=2).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    classifier = save_converted(tmp_path / "classifier", Converted(
        kind=resnet.KIND, config=resnet.ResNetConfig(names, 32).to_dict(), variables=jax.device_get(variables)))
    with_f = build_bundle(tmp_path / "cars_f", generator=gen, domain="cars", framing="letterbox", w_avg_samples=100,
                          descriptor=dict(kind="resnet50", path=classifier))
    assert with_f.manifest["descriptor"]["attribute_names"] == list(names)
    assert with_f.manifest["descriptor"]["image_size"] == 32 and with_f.descriptor().attribute_names == names
    faces = Bundle(tmp_path, {})  # an older face bundle records neither: FFHQ-aligned faces, square crops
    assert faces.domain == "faces" and faces.image_framing() == "square"

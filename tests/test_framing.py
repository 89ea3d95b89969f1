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

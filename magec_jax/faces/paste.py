"""Paste-back: aligned crops (reconstructions, edits) warped into their photograph through a feathered mask.

Each crop is sampled at every photograph pixel its quad covers (the inverse of :meth:`Alignment.crop_to_photo`:
Pillow's bilinear affine transform of float images, so nothing is rounded before the blend) and blended with
weight ``smoothstep((d - margin) / feather)`` times :func:`~magec_jax.faces.align.untouched_weight`, where ``d``
is the pixel's distance to the nearest crop edge as a fraction of the crop side:

* 1 over the face and the centre of the crop, fading to 0 at ``margin`` inside the crop's edge, so there is no
  seam and every pixel outside ``[margin, 1 - margin]^2`` of every crop keeps its exact value;
* 0 where the crop shows NVIDIA's blurred padding instead of the photograph (a face at the photograph's edge).

A crop more than twice its quad's size in the photograph is first reduced with Lanczos to twice that size:
bilinear sampling then reads every crop pixel (it spans two), so it does not alias. Faces are blended in the
order given (a later face covers an earlier one where they overlap).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from magec_jax.faces.align import Alignment, AlignmentError, as_rgb, check_image, untouched_weight

# ITU-R BT.601 luma, as PIL's RGB -> L conversion: a grey photograph receives the crops' luma.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def paste_back(photo: np.ndarray, faces: Sequence[tuple[np.ndarray, Alignment]], *, margin: float = 0.05,
               feather: float = 0.1) -> np.ndarray:
    """The photograph with every face crop warped back into it and feathered in.

    Args:
      photo: uint8 ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]``; the result has the same shape (a
        grey photograph receives the crops' luma; alpha is kept unchanged).
      faces: ``(crop, alignment)`` pairs; ``crop`` is a square uint8 image of any size (grey, RGB or opaque
        RGBA), placed where ``alignment.quad`` says, whatever its own size.
      margin: the band along each crop edge, as a fraction of the crop side, that is never pasted.
      feather: the width of the fade from weight 0 (at ``margin`` from the crop edge) to 1, as a fraction of
        the crop side.
    """
    photo = check_image(photo)
    if not (0 <= margin and 0 < feather and margin + feather <= 0.5):
        raise AlignmentError(f"paste-back needs margin >= 0, feather > 0 and margin + feather <= 0.5, got "
                             f"{margin} and {feather}")
    image = photo if photo.ndim == 3 else photo[:, :, None]
    colour = image[:, :, :3] if image.shape[2] == 4 else image
    out = colour.astype(np.float32)
    for crop, alignment in faces:
        crop = as_rgb(crop, "face crop")
        if crop.shape[0] != crop.shape[1]:
            raise AlignmentError(f"a face crop must be square, got {crop.shape[1]}x{crop.shape[0]}")
        _blend_one(out, crop, alignment, margin, feather)
    result = image.copy()
    result[:, :, :colour.shape[2]] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return result.reshape(photo.shape)


def _blend_one(out_HxWxC: np.ndarray, crop_SxSx3: np.ndarray, alignment: Alignment, margin: float,
               feather: float) -> None:
    """Blends one crop into ``out`` (float32, modified in place) over the bounding box of its pasted region."""
    h, w, channels = out_HxWxC.shape
    to_photo = alignment.crop_to_photo()
    inner = np.array([[margin, margin], [margin, 1 - margin], [1 - margin, 1 - margin], [1 - margin, margin]])
    corners = inner @ to_photo[:, :2].T + to_photo[:, 2]
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 1, [w, h])
    if x0 >= x1 or y0 >= y1:
        return

    source = crop_SxSx3.astype(np.float32)
    if channels == 1:
        source = source @ _LUMA[:, None]
    size = min(int(np.ceil(2 * alignment.side())), source.shape[0])

    # Photograph pixel -> normalised crop coordinates (u, v) in [0, 1]^2, and the blend weight there.
    to_crop = np.linalg.inv(np.concatenate([to_photo, [[0.0, 0.0, 1.0]]]))[:2]
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    u = np.float32(to_crop[0, 0]) * xs + np.float32(to_crop[0, 1]) * ys + np.float32(to_crop[0, 2])
    v = np.float32(to_crop[1, 0]) * xs + np.float32(to_crop[1, 1]) * ys + np.float32(to_crop[1, 2])
    edge = np.minimum(np.minimum(u, 1 - u), np.minimum(v, 1 - v))
    t = np.clip((edge - np.float32(margin)) / np.float32(feather), 0, 1)
    weight = t * t * (3 - 2 * t) * untouched_weight(alignment, (h, w), xs, ys)

    # Pillow's bilinear affine transform of float images: output pixel centre (X, Y) of the box reads the crop
    # at continuous coordinates size * to_crop @ (x0 + X - 1/2, y0 + Y - 1/2, 1).
    coeffs = size * np.column_stack([to_crop[:, :2], to_crop[:, :2] @ [x0 - 0.5, y0 - 0.5] + to_crop[:, 2]])
    sampled = np.empty((y1 - y0, x1 - x0, source.shape[2]), np.float32)
    for c in range(source.shape[2]):
        channel = Image.fromarray(np.ascontiguousarray(source[:, :, c]))
        if size < source.shape[0]:
            channel = channel.resize((size, size), Image.LANCZOS)
        sampled[:, :, c] = np.asarray(channel.transform((x1 - x0, y1 - y0), Image.AFFINE, coeffs.ravel(),
                                                        Image.BILINEAR))
    region = out_HxWxC[y0:y1, x0:x1]
    region += (sampled - region) * weight[:, :, None]

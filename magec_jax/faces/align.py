"""Face alignment: NVIDIA's FFHQ crop, template crops, and the record that lets a crop be pasted back.

Every aligned crop here is an axis-aligned square cut out of a rotated, scaled square of the photograph, the
**quad**. Two ways to choose the quad from a face's four points (``eye_left``, ``eye_right``, ``mouth_left``,
``mouth_right``; ``eye_left`` is the eye on the image's left, as in NVIDIA's script):

* ``ffhq`` (:func:`ffhq_quad`): the formula of ``recreate_aligned_images`` in NVlabs/ffhq-dataset
  (``download_ffhq.py``), the framing of FFHQ and of every generator trained on it.
* a :class:`Template` (:meth:`Alignment.to_template`): canonical positions of the four points in a crop of a
  given size, e.g. fitted on a generator's own samples (:func:`fit_template`); the quad is the preimage of the
  crop under the least-squares similarity transform of the four points (:func:`fit_similarity`).

Either way, :func:`warp` cuts the crop with NVIDIA's steps unchanged: integer shrink (Lanczos) when the quad is
more than four times the output size, crop with a 10% border, reflect-pad (at least 30% of the quad) with the
blurred, median-filled fade where the quad leaves the photograph, ``PIL.Image.transform(QUAD, BILINEAR)`` to
``transform_size`` and Lanczos down to the output size. :func:`align_ffhq` matches NVIDIA's script to well under
one grey level (``tests/test_faces_align.py``; NVIDIA's scipy blur is :func:`gaussian_blur` here).
:func:`adaptive_transform_size` supersamples only as much as a quad needs (NVIDIA's is always 4x), and
:func:`untouched_weight` says where a crop shows the photograph itself, for pasting back (``faces.paste``).

Coordinates: points and quads are in photograph pixels with pixel centres at integers (dlib's and NVIDIA's
convention); template points likewise in crop pixels. The quad's corners, in NVIDIA's order (top-left,
bottom-left, bottom-right, top-right of the crop), are the crop's outer corners: crop coordinate ``a`` in
``[0, size]^2`` (pixel ``i`` spans ``[i, i + 1]``) lies at photograph pixel
``nw + (ne - nw) a_x / size + (sw - nw) a_y / size`` (:meth:`Alignment.crop_to_photo`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from magec_jax.errors import MagecError

FACE_POINTS = ("eye_left", "eye_right", "mouth_left", "mouth_right")

# A face whose quad side is under this fraction of the output size is reported as too small to invert: its crop
# would be upsampled more than 4x (an eye-to-eye distance under 1/16 of the output size), too blurred for the
# generator to reconstruct or for an edit to show.
MIN_QUAD_FRACTION = 0.25

_FFT_LINES = 256  # lines per block in gaussian_blur's FFT passes


class AlignmentError(MagecError):
    """Bad input to an alignment function (wrong array shape or type, transparent pixels, degenerate points)."""


# ----------------------------------------------------------------------------------------------------------------
# Points and photographs.


def face_points(points: Any) -> np.ndarray:
    """The four face points as a float64 ``[4, 2]`` array (rows in :data:`FACE_POINTS` order, ``x, y``)."""
    pts = np.asarray(points, np.float64)
    if pts.shape != (4, 2) or not np.all(np.isfinite(pts)):
        raise AlignmentError(f"face points must be 4 finite (x, y) pairs {FACE_POINTS}, got shape {pts.shape}")
    return pts


def points_from_landmarks68(lm_68x2: Any) -> np.ndarray:
    """The four face points from dlib's 68 landmarks, as NVIDIA's script reads them: eye centres are the means
    of points 36-41 and 42-47, mouth corners are points 48 and 54."""
    lm = np.asarray(lm_68x2, np.float64)
    if lm.shape != (68, 2):
        raise AlignmentError(f"dlib landmarks must have shape (68, 2), got {lm.shape}")
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[48], lm[54]])


def check_image(img: Any, what: str = "photograph") -> np.ndarray:
    """``img`` as an array, if it is a uint8 image: ``[H, W]`` or ``[H, W, C]`` with C in 1 (grey), 3 (RGB), 4
    (RGBA); else an :class:`AlignmentError` naming ``what`` it is."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise AlignmentError(f"a {what} must be uint8 [H, W] or [H, W, 1|3|4], got {img.dtype} {img.shape}")
    return img


def as_rgb(img: Any, what: str = "photograph") -> np.ndarray:
    """A uint8 image as ``[H, W, 3]`` RGB: grey (``[H, W]`` or ``[H, W, 1]``) is replicated; RGBA is accepted
    when every pixel is opaque (a transparent pixel has no defined colour to align)."""
    img = check_image(img, what)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 4:
        transparent = int(np.count_nonzero(img[:, :, 3] < 255))
        if transparent:
            raise AlignmentError(f"RGBA {what} with {transparent} transparent pixels: flatten it onto a background "
                                 "first")
        return img[:, :, :3]
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


# ----------------------------------------------------------------------------------------------------------------
# Choosing the quad.


def ffhq_quad(points: Any) -> np.ndarray:
    """NVIDIA's FFHQ quad ``[4, 2]`` (top-left, bottom-left, bottom-right, top-right) from the four points.

    The crop's x axis is the eye line tilted by the eye-to-mouth direction; its half side is
    ``max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)``; its centre is ``eye_avg + 0.1 eye_to_mouth``.
    """
    eye_left, eye_right, mouth_left, mouth_right = face_points(points)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (mouth_left + mouth_right) * 0.5 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    if not norm > 0:
        raise AlignmentError("degenerate face points: the eye line and the eye-to-mouth line cancel out")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def fit_similarity(src_Nx2: Any, dst_Nx2: Any) -> np.ndarray:
    """The similarity (rotation, uniform scale, translation; no reflection) ``[2, 3]`` matrix ``M`` minimising
    ``sum |M [src; 1] - dst|^2``: Umeyama's closed form, which in 2-D is one complex ratio: with centred points
    as complex numbers ``z`` and ``w``, ``s e^{i theta} = sum(conj(z) w) / sum(|z|^2)``."""
    src, dst = np.asarray(src_Nx2, np.float64), np.asarray(dst_Nx2, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise AlignmentError(f"similarity fit needs two [N >= 2, 2] point sets, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    z = (src - src_mean) @ [1, 1j]
    w = (dst - dst_mean) @ [1, 1j]
    spread = np.sum(np.abs(z) ** 2)
    if not spread > 0:
        raise AlignmentError("similarity fit: the source points all coincide")
    a = np.sum(np.conj(z) * w) / spread
    rot_scale = np.array([[a.real, -a.imag], [a.imag, a.real]])
    return np.concatenate([rot_scale, (dst_mean - rot_scale @ src_mean)[:, None]], axis=1)


def _pair(value: Any) -> tuple[float, float]:
    pair = np.asarray(value, np.float64)
    if pair.shape != (2,) or not np.all(np.isfinite(pair)):
        raise AlignmentError(f"a point must be one finite (x, y) pair, got {value!r}")
    return (float(pair[0]), float(pair[1]))


@dataclasses.dataclass(frozen=True)
class Template:
    """Canonical positions of the four face points in an aligned crop of ``size`` x ``size`` pixels (crop
    pixels, centres at integers): how a generator's training images were framed."""

    size: int
    eye_left: tuple[float, float]
    eye_right: tuple[float, float]
    mouth_left: tuple[float, float]
    mouth_right: tuple[float, float]

    def __post_init__(self):
        if not (isinstance(self.size, (int, np.integer)) and self.size > 0):
            raise AlignmentError(f"template size must be a positive integer, got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))
        for name in FACE_POINTS:
            object.__setattr__(self, name, _pair(getattr(self, name)))
        face_points(self.points())

    @classmethod
    def from_points(cls, size: int, points: Any) -> Template:
        """A template from a ``[4, 2]`` array in :data:`FACE_POINTS` order."""
        return cls(size, *face_points(points))

    def points(self) -> np.ndarray:
        """The four points as a float64 ``[4, 2]`` array."""
        return np.array([getattr(self, name) for name in FACE_POINTS], np.float64)

    def to_json(self) -> dict[str, Any]:
        """``{"size": S, "eye_left": [x, y], ...}``."""
        return {"size": self.size, **{name: list(getattr(self, name)) for name in FACE_POINTS}}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Template:
        """Inverse of :meth:`to_json`."""
        try:
            return cls(obj["size"], *(obj[name] for name in FACE_POINTS))
        except (KeyError, TypeError, ValueError) as e:
            raise AlignmentError(f"bad template JSON ({e.__class__.__name__}: {e})") from None


def fit_template(points_Nx4x2: Any, size: int) -> Template:
    """The template of N aligned crops of ``size`` pixels: the mean of each face point over the crops' own
    landmarks (e.g. detected on a generator's samples)."""
    pts = np.asarray(points_Nx4x2, np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (4, 2) or pts.shape[0] == 0:
        raise AlignmentError(f"template fit needs [N >= 1, 4, 2] face points, got shape {pts.shape}")
    return Template.from_points(size, pts.mean(0))


def ffhq_template(points_Nx4x2: Any, size: int) -> Template:
    """The FFHQ framing written as a template, for reference: where :func:`ffhq_quad` puts the four points of
    these faces (photograph points, N faces) in a crop of ``size``, averaged. Aligning one face to the template
    of itself alone reproduces its FFHQ quad exactly (the FFHQ crop is a similarity image of its points)."""
    pts = np.asarray(points_Nx4x2, np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (4, 2) or pts.shape[0] == 0:
        raise AlignmentError(f"ffhq template needs [N >= 1, 4, 2] face points, got shape {pts.shape}")
    return fit_template([Alignment.ffhq(p, size).points_in_crop() for p in pts], size)


# ----------------------------------------------------------------------------------------------------------------
# The alignment record.


@dataclasses.dataclass(frozen=True)
class Alignment:
    """Where an aligned crop of ``output_size`` pixels lies in its photograph: the ``quad`` (4 corners in
    photograph pixels, NVIDIA's order) and the face ``points`` it was computed from (photograph pixels,
    :data:`FACE_POINTS` order). The quad is always a square (so the crop-to-photograph map is a similarity)."""

    quad: tuple[tuple[float, float], ...]
    output_size: int
    points: tuple[tuple[float, float], ...]

    def __post_init__(self):
        quad = np.asarray(self.quad, np.float64)
        if quad.shape != (4, 2) or not np.all(np.isfinite(quad)):
            raise AlignmentError(f"quad must be 4 finite (x, y) corners, got shape {quad.shape}")
        side = quad[3] - quad[0]
        expected = np.stack([quad[0], quad[0] + side[::-1] * [-1, 1], quad[0] + side + side[::-1] * [-1, 1],
                             quad[3]])
        if not np.hypot(*side) > 0 or np.max(np.abs(quad - expected)) > 1e-6 * (1.0 + np.abs(quad).max()):
            raise AlignmentError("quad must be a square in NVIDIA's corner order (top-left, bottom-left, "
                                 f"bottom-right, top-right), got {quad.tolist()}")
        if not (isinstance(self.output_size, (int, np.integer)) and self.output_size > 0):
            raise AlignmentError(f"output size must be a positive integer, got {self.output_size!r}")
        object.__setattr__(self, "quad", tuple(_pair(c) for c in quad))
        object.__setattr__(self, "output_size", int(self.output_size))
        object.__setattr__(self, "points", tuple(_pair(p) for p in face_points(self.points)))

    @classmethod
    def ffhq(cls, points: Any, output_size: int) -> Alignment:
        """NVIDIA's FFHQ framing of a face (:func:`ffhq_quad`)."""
        return cls(ffhq_quad(points), output_size, face_points(points))

    @classmethod
    def to_template(cls, points: Any, template: Template) -> Alignment:
        """The crop of ``template.size`` whose least-squares similarity transform takes the face's points to the
        template's: the quad is the preimage of the crop's outer corners."""
        pts = face_points(points)
        to_crop = fit_similarity(pts, template.points())
        if not abs(np.linalg.det(to_crop[:, :2])) > 0:
            raise AlignmentError("degenerate face points: all four coincide")
        s = float(template.size)
        corners = np.array([[0.0, 0.0], [0.0, s], [s, s], [s, 0.0]]) - 0.5  # crop pixel centres are at integers
        quad = np.linalg.solve(to_crop[:, :2], (corners - to_crop[:, 2]).T).T
        return cls(quad, template.size, pts)

    def crop_to_photo(self) -> np.ndarray:
        """The ``[2, 3]`` affine map from crop coordinates normalised to ``[0, 1]^2`` (outer corners at 0 and 1)
        to photograph pixels."""
        nw, sw, _, ne = np.asarray(self.quad, np.float64)
        return np.stack([ne - nw, sw - nw, nw], axis=1)

    def side(self) -> float:
        """The quad's side in photograph pixels."""
        nw, ne = np.asarray(self.quad[0]), np.asarray(self.quad[3])
        return float(np.hypot(*(ne - nw)))

    def points_in_crop(self) -> np.ndarray:
        """The face points in crop pixels (centres at integers), ``[4, 2]``."""
        m = self.crop_to_photo()
        normalised = np.linalg.solve(m[:, :2], (np.asarray(self.points) - m[:, 2]).T).T
        return normalised * self.output_size - 0.5

    def to_json(self) -> dict[str, Any]:
        """``{"landmarks": {"eye_left": [x, y], ...}, "quad": [[x, y] x 4], "output_size": S}``."""
        return {"landmarks": {name: list(p) for name, p in zip(FACE_POINTS, self.points)},
                "quad": [list(c) for c in self.quad], "output_size": self.output_size}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Alignment:
        """Inverse of :meth:`to_json`."""
        try:
            return cls(obj["quad"], obj["output_size"], [obj["landmarks"][name] for name in FACE_POINTS])
        except (KeyError, TypeError, ValueError) as e:
            raise AlignmentError(f"bad alignment JSON ({e.__class__.__name__}: {e})") from None


def face_size_problem(alignment: Alignment) -> str | None:
    """``None`` when the face is large enough to invert, else the reason, with its size: a quad side under
    :data:`MIN_QUAD_FRACTION` of the output size means the crop would be upsampled more than 4x."""
    side = alignment.side()
    need = MIN_QUAD_FRACTION * alignment.output_size
    if side >= need:
        return None
    eyes = np.asarray(alignment.points)
    return (f"face too small: quad side {side:.0f} px (eye to eye {np.hypot(*(eyes[1] - eyes[0])):.0f} px) for a "
            f"{alignment.output_size} px crop; at least {need:.0f} px ({MIN_QUAD_FRACTION:g} of the crop) is needed")


# ----------------------------------------------------------------------------------------------------------------
# The warp.


def gaussian_blur(img_HxWxC: np.ndarray, sigma: float, *, truncate: float = 4.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(img, [sigma, sigma, 0])`` in numpy, float32 out: the same normalised
    kernel of radius ``int(truncate * sigma + 0.5)``, the same ``'reflect'`` border (``d c b a | a b c d``), along
    axis 0 then axis 1, each pass rounded to float32 as scipy does. Each pass is one FFT convolution in float64, so
    NVIDIA's blur (sigma 2% of the quad: tens of pixels on large photographs) costs O(n log n), not O(n sigma)."""
    img = np.asarray(img_HxWxC, np.float32)
    if img.ndim != 3 or sigma < 0:
        raise AlignmentError(f"gaussian blur takes [H, W, C] and sigma >= 0, got {img.shape} and {sigma}")
    radius = int(truncate * sigma + 0.5)
    if radius == 0:
        return img.copy()
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 / (sigma * sigma) * taps ** 2)
    kernel /= kernel.sum()
    for axis in (0, 1):
        img = _convolve_reflect(img, kernel, radius, axis)
    return img


def _convolve_reflect(img: np.ndarray, kernel: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """One pass of :func:`gaussian_blur` along ``axis``: each line, reflected by ``radius`` and convolved by FFT.
    Lines go through in blocks of :data:`_FFT_LINES`, so the FFT's float64 temporaries stay a few MB (the whole
    image at once ran 5x slower on a 1650x1650 padding)."""
    lines = np.moveaxis(img, axis, -1)
    shape, n = lines.shape, lines.shape[-1]
    lines = np.ascontiguousarray(lines).reshape(-1, n)
    length = _fast_fft_length(n + 4 * radius)  # the full linear convolution of a reflected line and the kernel
    kernel_ft = np.fft.rfft(kernel, length)
    out = np.empty(lines.shape, np.float32)
    for start in range(0, lines.shape[0], _FFT_LINES):
        block = np.pad(lines[start:start + _FFT_LINES].astype(np.float64), ((0, 0), (radius, radius)),
                       mode="symmetric")  # numpy's 'symmetric' is scipy's 'reflect'
        spectrum = np.fft.rfft(block, length, axis=-1)
        spectrum *= kernel_ft
        out[start:start + _FFT_LINES] = np.fft.irfft(spectrum, length, axis=-1)[:, 2 * radius:2 * radius + n]
    return np.moveaxis(out.reshape(shape), -1, axis)


def _fast_fft_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (pocketfft is several times slower on lengths with large prime factors)."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            length = p35
            while length < n:
                length *= 2
            best = min(best, length)
            p35 *= 3
        p5 *= 5
    return best


class _WarpPlan(NamedTuple):
    """NVIDIA's geometry for one photograph and quad (everything :func:`warp` does before the quad transform)."""

    shrink: int  # integer reduction of the photograph (1: none)
    crop: tuple[int, int, int, int]  # left, top, right, bottom, in reduced photograph pixels
    pad: tuple[int, int, int, int] | None  # reflect padding of the crop (left, top, right, bottom); None: none
    qsize: float  # the quad's side in reduced pixels
    quad: np.ndarray  # [4, 2] in the padded crop's pixels


def _shrink(alignment: Alignment) -> int:
    """NVIDIA's integer reduction of the photograph before the crop: by half the quad over the output size,
    rounded down, when that is at least 2 (1: none)."""
    shrink = int(np.floor(alignment.side() / alignment.output_size * 0.5))
    return shrink if shrink > 1 else 1


def _warp_plan(width: int, height: int, alignment: Alignment) -> _WarpPlan:
    shrink = _shrink(alignment)
    quad = np.array(alignment.quad, np.float64) / shrink
    qsize = alignment.side() / shrink
    if shrink > 1:
        width, height = int(np.rint(width / shrink)), int(np.rint(height / shrink))

    border = max(int(np.rint(qsize * 0.1)), 3)
    lo, hi = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    crop = (max(lo[0] - border, 0), max(lo[1] - border, 0), min(hi[0] + border, width), min(hi[1] + border, height))
    quad -= crop[:2]

    lo, hi = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    pad = np.maximum([-lo[0] + border, -lo[1] + border, hi[0] - (crop[2] - crop[0]) + border,
                      hi[1] - (crop[3] - crop[1]) + border], 0)
    if pad.max() <= border - 4:
        return _WarpPlan(shrink, crop, None, qsize, quad)
    pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
    return _WarpPlan(shrink, crop, tuple(int(p) for p in pad), qsize, quad + pad[:2])


def warp(photo: np.ndarray, alignment: Alignment, transform_size: int | None = None) -> np.ndarray:
    """The aligned crop ``[S, S, 3]`` uint8 (``S = alignment.output_size``), by NVIDIA's steps (module docstring).

    Args:
      photo: uint8 ``[H, W]``, ``[H, W, 1|3]``, or opaque ``[H, W, 4]`` (see :func:`as_rgb`).
      alignment: the quad and output size.
      transform_size: the size of the quad transform before the Lanczos reduction; ``None`` is NVIDIA's
        ``4 * output_size`` (4096 for 1024); :func:`adaptive_transform_size` is as good and faster.
    """
    output_size = alignment.output_size
    transform_size = 4 * output_size if transform_size is None else int(transform_size)
    if transform_size < output_size:
        raise AlignmentError(f"transform size {transform_size} is below the output size {output_size}")
    img = Image.fromarray(as_rgb(photo))
    plan = _warp_plan(img.size[0], img.size[1], alignment)
    if plan.shrink > 1:
        img = img.resize((int(np.rint(img.size[0] / plan.shrink)), int(np.rint(img.size[1] / plan.shrink))),
                         Image.LANCZOS)
    if plan.crop != (0, 0, *img.size):
        img = img.crop(plan.crop)
    if plan.pad is not None:
        img = Image.fromarray(_padded_with_fade(np.asarray(img), plan.pad, plan.qsize))
    img = img.transform((transform_size, transform_size), Image.QUAD, (plan.quad + 0.5).flatten(), Image.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.LANCZOS)
    return np.asarray(img)


def adaptive_transform_size(alignment: Alignment) -> int:
    """A transform size that supersamples only as much as the quad needs: ``output_size`` times the quad's side
    over the output size (after NVIDIA's integer shrink), rounded up, between 1 and 4. The bilinear transform
    then never skips photograph pixels, and the Lanczos reduction does the anti-aliasing, as at NVIDIA's 4x: on
    the fixture's 15 faces the crops differ from NVIDIA's by at most 0.36 grey levels mean absolute difference,
    and a face no larger than the output is transformed once at the output size (16x fewer pixels)."""
    ratio = alignment.side() / _shrink(alignment) / alignment.output_size
    return alignment.output_size * int(np.clip(np.ceil(ratio), 1, 4))


def untouched_weight(alignment: Alignment, photo_hw: tuple[int, int], x_W: np.ndarray, y_H: np.ndarray) -> np.ndarray:
    """Where the crop shows the photograph unaltered, at photograph pixels ``x`` (a row of column indices) and
    ``y`` (a column of row indices): 1 there, 0 where NVIDIA's border blur touched it.

    When the quad leaves the photograph, the padding's fade blurs the photograph within a band of a third of the
    padding inside its edge (NVIDIA's ``mask`` above -1/3). The weight is 0 on that band and rises smoothly to 1
    across the next third, so what is pasted there never carries the blur and has no seam. Without padding
    (the quad inside the photograph) it is 1 everywhere.
    """
    plan = _warp_plan(photo_hw[1], photo_hw[0], alignment)
    if plan.pad is None:
        return np.ones(np.broadcast_shapes(np.shape(x_W), np.shape(y_H)), np.float32)
    left, top, right, bottom = plan.pad
    width = plan.crop[2] - plan.crop[0] + left + right
    height = plan.crop[3] - plan.crop[1] + top + bottom
    x = np.asarray(x_W, np.float64) / plan.shrink - plan.crop[0] + left
    y = np.asarray(y_H, np.float64) / plan.shrink - plan.crop[1] + top
    # 0 at mask -1/3 (where the blur starts), 1 at mask -2/3.
    t = np.clip(-3.0 * _fade_mask(x, y, width, height, plan.pad) - 1.0, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _fade_mask(x: np.ndarray, y: np.ndarray, width: int, height: int, pad: tuple[int, int, int, int]) -> np.ndarray:
    """NVIDIA's ``mask`` at pixels ``(x, y)`` of the padded crop (``width`` x ``height``): 1 at its edge, 0 where
    the photograph's own pixels begin, negative further in (float64, as NVIDIA's numpy computes it)."""
    left, top, right, bottom = (np.float64(p) for p in pad)
    return np.maximum(1.0 - np.minimum(x / left, (width - 1 - x) / right),
                      1.0 - np.minimum(y / top, (height - 1 - y) / bottom))


def _padded_with_fade(img_HxWx3: np.ndarray, pad: tuple[int, int, int, int], qsize: float) -> np.ndarray:
    """NVIDIA's padding: reflect by ``pad`` (left, top, right, bottom), then fade towards the edges into a blur
    (sigma 2% of the quad) and, outermost, into the median colour."""
    left, top, right, bottom = pad
    img = np.pad(img_HxWx3.astype(np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect")
    h, w, _ = img.shape
    mask = _fade_mask(np.arange(w, dtype=np.float32)[None, :, None], np.arange(h, dtype=np.float32)[:, None, None],
                      w, h, pad)
    img += (gaussian_blur(img, qsize * 0.02) - img) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def align_ffhq(photo: np.ndarray, points: Any, output_size: int, transform_size: int | None = None) -> np.ndarray:
    """NVIDIA's FFHQ-aligned crop ``[output_size, output_size, 3]`` uint8 of the face with these four points
    (``recreate_aligned_images`` with its defaults when ``transform_size`` is ``None``)."""
    return warp(photo, Alignment.ffhq(points, output_size), transform_size)


def align_to_template(photo: np.ndarray, points: Any, template: Template,
                      transform_size: int | None = None) -> np.ndarray:
    """The crop ``[template.size, template.size, 3]`` uint8 that puts the face's points where the template has
    them (least squares, similarity), with FFHQ's border handling."""
    return warp(photo, Alignment.to_template(points, template), transform_size)

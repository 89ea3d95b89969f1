"""Image input/output and atomic file writes shared by the command-line tools.

Every image a command reads comes through :func:`open_image` (the one safe opener). Reading policy:
  * Size first: the declared width x height is read from the file's header and an image over
    ``max_pixels`` (default :data:`MAX_IMAGE_PIXELS`, Pillow's own warning threshold, 89,478,485 pixels;
    the commands' ``max_image_pixels`` setting) is refused before any pixel is decoded. Pillow's
    decompression-bomb warning is an error within the call, and its error a refusal like any other.
  * One picture per file: an animated GIF/PNG/WebP or a multi-page TIFF is refused with its frame count
    (which frame to invert is ambiguous); a camera JPEG carrying extra pictures (MPO) is read as its primary one.
  * Decoded fully inside the call: a truncated or undecodable file is a :class:`~magec_jax.errors.BadImage`
    (a ``FileFormatError``: one line naming the file and the problem), which every command reports, records
    and skips.
  * Upright: the EXIF orientation is applied (a rotated phone photograph is read as it is displayed).
  * 8 bits: CMYK and YCbCr become RGB (Pillow's conversion, no colour management, as for RGB files); 16-bit
    grey (``I;16``, or ``I`` holding 0..65535) is scaled to 8 bits (``round(v / 257)``), never clipped;
    1-bit becomes grey. Float and other modes are refused.

Input policy of the inversion (:func:`load_image`), documented in docs/commands.md, "Input policy":
  * Accepted: RGB or grey (replicated to RGB) after the reading policy above; RGBA/LA/P only when every pixel
    is opaque. Transparent pixels are refused.
  * Too small: the side resized to the resolution (the shorter one for the square framing, the longer one for
    the letterbox) under ``min_size`` pixels is refused (upsampling would invent detail).
  * Geometry (:func:`frame`): by default the largest centred square is cropped, then resized to the generator's
    resolution with Lanczos (antialiased when shrinking). Aligned face crops (FFHQ/CelebA-HQ style) are already
    square, so only the resize applies to them. ``framing="letterbox"`` keeps the whole image instead, its long
    side resized to the resolution and centred on black, as a letterboxed generator's data was (the cars).
  * Values: uint8 0..255 -> float32 [-1, 1] as ``x / 127.5 - 1``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np
from PIL import Image, ImageOps

from magec_jax.errors import BadImage, FileFormatError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def list_images(source: str | os.PathLike, *, exclude: str | os.PathLike | None = None) -> list[Path]:
    """The images of a folder (recursive, sorted) or of a list file (one path per line, ``#`` comments,
    relative paths taken from the list file's folder).

    Args:
      source: the folder or list file.
      exclude: a folder whose contents are never listed (a job's output folder inside its input folder, so
        that reconstructions and edit grids do not become inputs of the next run).

    Raises:
      FileFormatError: ``source`` is neither a folder nor a file.
    """
    source = Path(source)
    if source.is_dir():
        skip = Path(exclude).resolve() if exclude is not None else None
        return sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                      and (skip is None or not p.resolve().is_relative_to(skip)))
    if source.is_file():
        lines = [ln.strip() for ln in source.read_text().splitlines()]
        return [source.parent / ln if not Path(ln).is_absolute() else Path(ln)
                for ln in lines if ln and not ln.startswith("#")]
    raise FileFormatError(source, "no such folder or list file")


def output_name(image: Path, root: Path | None) -> str:
    """A flat, unique output stem for an input image: its path relative to ``root`` without suffix, with
    folder separators replaced by ``__`` (``people/ann/01.jpg`` -> ``people__ann__01``)."""
    rel = image.relative_to(root) if root is not None and image.is_relative_to(root) else Path(image.name)
    return "__".join(rel.with_suffix("").parts)


MAX_IMAGE_PIXELS = 89_478_485
"""The default pixel limit (``max_image_pixels``): Pillow's decompression-bomb warning threshold as Pillow ships
it (``PIL.Image.MAX_IMAGE_PIXELS``, 1024**3 // 4 // 3: a quarter GiB of RGB pixels, about 9459 x 9459)."""

# Modes the reading policy turns into 8-bit L, LA, RGB or RGBA (:func:`_to_8bit`); anything else is refused
# from the header, before decoding.
_READABLE_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                             "I", "I;16", "I;16L", "I;16B", "I;16N"})
_OPEN_LOCK = threading.Lock()  # Image.open reads Pillow's module-level limit and the warning filters
_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")


def open_image(source: str | os.PathLike | bytes, *, max_pixels: int = MAX_IMAGE_PIXELS,
               name: str | os.PathLike | None = None) -> Image.Image:
    """Reads one image file by the reading policy of this module (see the module docstring): decoded, upright,
    8 bits per channel, of mode ``L``, ``LA``, ``RGB`` or ``RGBA`` (an alpha channel or a palette transparency).

    Args:
      source: a file path, or the file's bytes (a tar member).
      max_pixels: the pixel limit; a larger declared width x height is refused before decoding.
      name: how the file is named in errors (default: ``source`` when it is a path).

    Raises:
      BadImage: over the pixel limit, several frames, a refused mode, or undecodable/truncated (one line).
      FileFormatError: the file does not exist.
    """
    if not (isinstance(max_pixels, (int, np.integer)) and max_pixels >= 1):
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        label, fp = os.fspath(name) if name is not None else "<image bytes>", io.BytesIO(source)
    else:
        label, fp = os.fspath(name if name is not None else source), Path(source)
    im = _open_header(fp, label, int(max_pixels))
    with im:
        try:
            w, h = im.size
            if w * h > max_pixels:  # our own guard, whatever Pillow's module-level limit is
                raise BadImage(label, _over_limit(w * h, max_pixels, (w, h)))
            if im.mode not in _READABLE_MODES:
                raise BadImage(label, f"unsupported image mode {im.mode}: expected RGB, grey, CMYK or 16-bit grey")
            frames = getattr(im, "n_frames", 1)
            if frames > 1 and im.format != "MPO":  # MPO: a camera JPEG with extra pictures; the first is the photo
                kind = "an animated" if getattr(im, "is_animated", False) and im.format != "TIFF" else "a multi-page"
                raise BadImage(label, f"{kind} {im.format} of {frames} frames: which frame to use is ambiguous; "
                                      "save the one you want as a still image")
            im.load()
            return _to_8bit(label, ImageOps.exif_transpose(im))
        except BadImage:
            raise
        except Exception as e:  # noqa: BLE001 -- any decoder failure on a hostile file is a bad image, not a crash
            raise BadImage(label, f"unreadable or corrupt image ({e.__class__.__name__}: {e})") from None


READING_POLICY = 2
"""Version of the reading policy (:func:`open_image`); 2: pixel limit, one frame, EXIF orientation, CMYK and
16-bit converted. Jobs remember a refused file only for the policy and limit that refused it."""


def reading_settings(max_pixels: int = MAX_IMAGE_PIXELS) -> dict[str, int]:
    """What decides whether a file is readable, besides the file: the policy's version and the pixel limit."""
    return dict(policy=READING_POLICY, max_image_pixels=int(max_pixels))


def _open_header(fp: Path | io.BytesIO, label: str, max_pixels: int) -> Image.Image:
    """``Image.open``: identifies the file and reads its header (no pixel data). Pillow's own bomb check
    runs inside it against its module-level limit; for the duration of the call (under a lock) that limit is
    ``max_pixels`` and its warning an error, so that a setting above Pillow's default is honoured and a bomb is
    a refusal. :func:`open_image` checks the size again itself."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
            try:
                return Image.open(fp)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except FileNotFoundError:
        raise FileFormatError(label, "no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = _BOMB_PIXELS.search(str(e))
        raise BadImage(label, _over_limit(int(found.group(1)) if found else None, max_pixels)) from None
    except Exception as e:  # noqa: BLE001 -- UnidentifiedImageError, a plugin's parser failing on a hostile header
        raise BadImage(label, f"unreadable or corrupt image ({e.__class__.__name__}: {e})") from None


def _over_limit(pixels: int | None, max_pixels: int, size: tuple[int, int] | None = None) -> str:
    declared = f"{size[0]}x{size[1]} = " if size else ""
    count = f"{declared}{pixels:,} pixels" if pixels is not None else "a size"
    return (f"declares {count}, over the pixel limit of {max_pixels:,} (max_image_pixels): refused unread "
            "(a possible decompression bomb)")


def _to_8bit(label: str, im: Image.Image) -> Image.Image:
    """A decoded image as 8-bit ``L``, ``LA``, ``RGB`` or ``RGBA`` (see the module docstring)."""
    mode = im.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode in ("CMYK", "YCbCr", "RGBX"):
        return im.convert("RGB")
    if mode == "La":
        return im.convert("LA")
    if mode in ("PA", "RGBa"):
        return im.convert("RGBA")
    if mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if mode == "I" or mode.startswith("I;16"):
        values = np.asarray(im)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise BadImage(label, f"mode {mode} with values outside 0..65535: not a 16-bit image")
        scaled = (values.astype(np.uint32) * 255 + 32767) // 65535  # round(v / 257): 65535 -> 255, scaled not clipped
        return Image.fromarray(scaled.astype(np.uint8), "L")
    raise BadImage(label, f"unsupported image mode {mode}: expected RGB, grey, CMYK or 16-bit grey")


def opaque_rgb(label: str | os.PathLike, im: Image.Image) -> Image.Image:
    """An image from :func:`open_image` as RGB; one with an alpha channel only when every pixel is opaque.

    Raises:
      BadImage: transparent pixels.
    """
    if im.mode in ("LA", "RGBA"):
        if np.asarray(im.getchannel("A")).min() < 255:
            raise BadImage(label, f"mode {im.mode} with transparent pixels: flatten it onto a background first")
    return im if im.mode == "RGB" else im.convert("RGB")


FRAMINGS = ("square", "letterbox")


def load_image(path: str | os.PathLike, resolution: int, *, min_size: int | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS, framing: str = "square") -> np.ndarray:
    """Reads one image by the input policy of this module: ``[resolution, resolution, 3]`` float32 in [-1, 1],
    framed by :func:`frame` (``framing``: ``"square"`` or ``"letterbox"``).

    Raises:
      FileFormatError: missing, unreadable/corrupt (:class:`~magec_jax.errors.BadImage`), over ``max_pixels``,
        several frames, an unsupported mode, transparency, or too small.
      ValueError: an unknown ``framing`` (before the file is read).
    """
    return load_framed(path, resolution, min_size=min_size, max_pixels=max_pixels, framing=framing)[0]


def load_framed(path: str | os.PathLike, resolution: int, *, min_size: int | None = None,
                max_pixels: int = MAX_IMAGE_PIXELS,
                framing: str = "square") -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """:func:`load_image` and the content box of :func:`frame` (where the picture is; :func:`content_mask`)."""
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r} (expected one of {', '.join(FRAMINGS)})")
    path = Path(path)
    min_size = resolution // 2 if min_size is None else min_size
    img = opaque_rgb(path, open_image(path, max_pixels=max_pixels))
    w, h = img.size
    side, which = (min(w, h), "shorter") if framing == "square" else (max(w, h), "longer")
    if side < min_size:
        raise FileFormatError(path, f"too small: {w}x{h}, the {which} side must be at least {min_size} px")
    pixels, box = frame(img, resolution, framing)
    return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0), box


def frame(img: Image.Image, resolution: int, framing: str = "square", *,
          crop: int | None = None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Frames an RGB image as a generator's training data was: uint8 ``[resolution, resolution, 3]`` and the
    content box ``(left, top, right, bottom)`` in output pixels (where the picture is; the rest is black band).

    Framings:
      * ``"square"``: the largest centred square (at most ``crop`` px on a side when given), Lanczos-resized;
        the content box is the whole frame.
      * ``"letterbox"``: the whole image, its long side resized to ``resolution`` with the aspect ratio kept
        (the short side rounded to the nearest pixel, at least 1), centred on black (NVIDIA's LSUN Car framing,
        here with each image's own aspect ratio, so that no part of an object cut to its box is lost).
    """
    w, h = img.size
    if framing == "square":
        side = min(w, h) if crop is None else min(crop, w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
        if side != resolution:
            img = img.resize((resolution, resolution), Image.LANCZOS)
        return np.asarray(img, np.uint8), (0, 0, resolution, resolution)
    if framing == "letterbox":
        scale = resolution / max(w, h)
        cw, ch = (max(1, min(resolution, round(v * scale))) for v in (w, h))
        if (cw, ch) != (w, h):
            img = img.resize((cw, ch), Image.LANCZOS)
        left, top = (resolution - cw) // 2, (resolution - ch) // 2
        out = np.zeros((resolution, resolution, 3), np.uint8)
        out[top: top + ch, left: left + cw] = np.asarray(img, np.uint8)
        return out, (left, top, left + cw, top + ch)
    raise ValueError(f"unknown framing {framing!r} (expected one of {', '.join(FRAMINGS)})")


def content_mask(box: tuple[int, int, int, int], resolution: int) -> np.ndarray:
    """float32 ``[resolution, resolution]``: 1 inside a :func:`frame` content box, 0 on its bands."""
    left, top, right, bottom = box
    mask = np.zeros((resolution, resolution), np.float32)
    mask[top:bottom, left:right] = 1.0
    return mask


def to_uint8(img_HxWxC: np.ndarray) -> np.ndarray:
    """[-1, 1] float -> uint8 0..255, the inverse of the input mapping: ``x * 127.5 + 127.5`` rounded half up
    and clipped, exactly as NVIDIA's ``gen_images.py`` writes pixels (``(x * 127.5 + 128).clamp(0, 255)``, then
    truncated). The one float -> pixel rounding of the package; any leading shape."""
    return np.clip(np.asarray(img_HxWxC, np.float32) * np.float32(127.5) + np.float32(128), 0, 255).astype(np.uint8)


def png_bytes(img_HxWxC: np.ndarray) -> bytes:
    """PNG encoding of a [-1, 1] float or uint8 image."""
    arr = img_HxWxC if img_HxWxC.dtype == np.uint8 else to_uint8(img_HxWxC)
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def grid(images_NxHxWxC: Iterable[np.ndarray], columns: int, pad: int = 2) -> np.ndarray:
    """Tiles uint8 or [-1, 1] images into one uint8 image, ``columns`` per row, row-major; ``pad`` white pixels
    around and between tiles, and white where the last row is short."""
    tiles = [im if im.dtype == np.uint8 else to_uint8(im) for im in images_NxHxWxC]
    h, w, c = tiles[0].shape
    rows = -(-len(tiles) // columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, q = divmod(i, columns)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = t
    return out


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Calls ``write(f)`` on a temporary file in ``path``'s folder, fsyncs it, and renames it to ``path``:
    readers see the old file or the complete new one, never a partial one. A killed writer leaves only a
    ``.<name>.*`` temporary behind. The file gets the mode any new file of the process gets (``0666`` less the
    umask), not ``mkstemp``'s private ``0600``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~process_umask())  # mkstemp makes 0600; a written file gets the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@functools.cache
def process_umask() -> int:
    """The process's file-creation mask (read once: ``os.umask`` can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic, pretty-printed JSON."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Atomic uncompressed ``.npz``."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Atomic ``.npy`` (streamed to disk, no in-memory copy)."""
    return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")

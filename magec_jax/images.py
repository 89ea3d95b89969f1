"""Image input/output and atomic file writes shared by the command-line tools.

Input policy (:func:`load_image`), documented in the README:
  * Accepted: anything Pillow decodes whose mode is RGB or L (grayscale is replicated to RGB); RGBA/LA/P
    only when every pixel is opaque. Other modes (CMYK, 16-bit, float, transparent pixels) are refused.
  * Too small: a shorter side under ``min_size`` pixels is refused (upsampling would invent detail).
  * Geometry: the largest centred square is cropped, then resized to the generator's resolution with
    Lanczos (antialiased when shrinking). Aligned face crops (FFHQ/CelebA-HQ style) are already square, so
    only the resize applies to them.
  * Values: uint8 0..255 -> float32 [-1, 1] as ``x / 127.5 - 1``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from magec_jax.errors import FileFormatError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


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


def load_image(path: str | os.PathLike, resolution: int, *, min_size: int | None = None) -> np.ndarray:
    """Reads one image by the input policy of this module: ``[resolution, resolution, 3]`` float32 in [-1, 1].

    Raises:
      FileFormatError: unreadable/corrupt file, unsupported mode, transparency, or too small.
    """
    path = Path(path)
    min_size = resolution // 2 if min_size is None else min_size
    try:
        with Image.open(path) as im:
            im.load()
            img = _to_rgb(path, im)
    except FileNotFoundError:
        raise FileFormatError(path, "no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise FileFormatError(path, f"unreadable or corrupt image ({e.__class__.__name__}: {e})") from None
    w, h = img.size
    if min(w, h) < min_size:
        raise FileFormatError(path, f"too small: {w}x{h}, the shorter side must be at least {min_size} px")
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != resolution:
        img = img.resize((resolution, resolution), Image.LANCZOS)
    return np.asarray(img, np.float32) / np.float32(127.5) - np.float32(1.0)


def _to_rgb(path: Path, im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode == "L":
        return im.convert("RGB")
    if im.mode in ("RGBA", "LA", "P", "PA"):
        rgba = im.convert("RGBA")
        if np.asarray(rgba.getchannel("A")).min() < 255:
            raise FileFormatError(path, f"mode {im.mode} with transparent pixels: flatten it onto a background first")
        return rgba.convert("RGB")
    raise FileFormatError(path, f"unsupported image mode {im.mode}: expected RGB or grayscale (8 bits per channel)")


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

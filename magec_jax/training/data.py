"""Face images for GAN training: read from a tar or a folder, cropped, resized, cached, split by person.

Source layout: ``<Person>/<Person>_NNNN.jpg`` (LFW's), inside a tar (read member by member, never extracted)
or under a folder. The person of an image is its parent folder's name.

Preprocessing (:func:`preprocess`): the central ``crop`` x ``crop`` box of the image (LFW deep-funneled
faces are centred in 250x250 frames; a 128 px box holds the face from chin to hairline with a little
background), then a Lanczos resize (antialiased when shrinking) to ``resolution``. Images are decoded once into
a uint8 array ``[N, R, R, 3]`` and cached as ``<cache_dir>/<source>_r<R>_c<crop>[_n<max>].npy``, with the
image paths in a ``.txt`` file beside it (one per line, in array order).

Held-out split (:func:`is_heldout`, :func:`split_by_person`): a person is held out when the first 8 bytes
of ``sha256(name)`` read as a fraction of 2**64 fall below ``heldout_fraction``. It depends only on the name
and the fraction: the same people are held out whatever the data source, order or subset, so the training
run, the demo and any evaluation agree on which faces the generator never saw.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from magec_jax.errors import FileFormatError
from magec_jax.images import (IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, atomic_save_npy, atomic_write_bytes, frame,
                              open_image, reading_settings)
from magec_jax.logs import Log, to_stderr

DEFAULT_HELDOUT_FRACTION = 0.1
DEFAULT_CROP = 128


@dataclasses.dataclass(frozen=True)
class FaceDataset:
    """Decoded images and where they came from.

    Attributes:
      images_NxHxWx3: uint8 pixels.
      paths: the image's path inside the source (``Person/Person_0001.jpg``), one per image.
      skipped: the source's files that could not be used (``image``: the path inside the source, ``reason``).
    """

    images_NxHxWx3: np.ndarray
    paths: tuple[str, ...]
    skipped: tuple[dict, ...] = ()  # the source's unreadable images: {image, reason}, not in ``paths``

    @property
    def people(self) -> tuple[str, ...]:
        """The person of each image (its parent folder's name)."""
        return tuple(person_of(p) for p in self.paths)


def person_of(path: str) -> str:
    """``'Person/Person_0001.jpg'`` -> ``'Person'`` (the parent folder's name; ``''`` at the top level)."""
    parts = Path(path).parts
    return parts[-2] if len(parts) > 1 else ""


HELDOUT_UNITS = ("folder", "file")


def group_of(path: str, by: str = "folder") -> str:
    """What is held out together: the image's person (``"folder"``, :func:`person_of`; LFW's layout) or the
    image itself (``"file"``, its name; a data set with one folder, such as the Stanford Cars crops)."""
    if by == "folder":
        return person_of(path)
    if by == "file":
        return Path(path).name
    raise ValueError(f"unknown held-out unit {by!r} (expected one of {', '.join(HELDOUT_UNITS)})")


def is_heldout(person: str, fraction: float = DEFAULT_HELDOUT_FRACTION) -> bool:
    """Whether ``person`` belongs to the held-out set: ``sha256(person)[:8] / 2**64 < fraction``."""
    digest = hashlib.sha256(person.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def split_by_person(
    paths: Sequence[str], fraction: float = DEFAULT_HELDOUT_FRACTION, by: str = "folder"
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, heldout)`` into ``paths``, sorted; an image is held out when its group
    (:func:`group_of`: its person by default) is."""
    heldout_N = np.asarray([is_heldout(group_of(p, by), fraction) for p in paths], bool)
    return np.flatnonzero(~heldout_N), np.flatnonzero(heldout_N)


def heldout_people(paths: Iterable[str], fraction: float = DEFAULT_HELDOUT_FRACTION, by: str = "folder") -> list[str]:
    """The sorted held-out groups (people by default, see :func:`group_of`) among those of ``paths``."""
    return sorted({group_of(p, by) for p in paths if is_heldout(group_of(p, by), fraction)})


def heldout_portraits(
    paths: Sequence[str], count: int, fraction: float = DEFAULT_HELDOUT_FRACTION
) -> list[str]:
    """One photograph each of ``count`` held-out people: the first (sorted) photo of the people at positions
    ``i * P // count`` of the sorted held-out people (``P`` of them), so the set is spread over the alphabet and
    a smaller count that divides a larger one picks a subset of it (the 8 demo examples are among the 16
    evaluation faces)."""
    first: dict[str, str] = {}
    for p in sorted(paths):
        person = person_of(p)
        if person not in first and is_heldout(person, fraction):
            first[person] = p
    people = sorted(first)
    if not 0 < count <= len(people):
        raise ValueError(f"asked for {count} held-out people; the source has {len(people)} at fraction {fraction}")
    return [first[people[i * len(people) // count]] for i in range(count)]


def preprocess(img: Image.Image, resolution: int, crop: int, framing: str = "square") -> np.ndarray:
    """uint8 ``[R, R, 3]`` by :func:`magec_jax.images.frame`: ``"square"``, the central ``crop`` box (clipped to
    the image) Lanczos-resized to ``resolution``; ``"letterbox"``, the whole image on black (``crop`` unused)."""
    return frame(img.convert("RGB"), resolution, framing, crop=crop)[0]


def _decode(name: str, data: bytes, resolution: int, crop: int, max_pixels: int, framing: str) -> np.ndarray:
    """One file's bytes by the reading policy of ``magec_jax.images.open_image``, then :func:`preprocess`.

    Raises:
      BadImage: over the pixel limit, several frames, undecodable or truncated.
    """
    return preprocess(open_image(data, max_pixels=max_pixels, name=name), resolution, crop, framing)


def list_source(source: str | os.PathLike) -> list[str]:
    """The image paths of a tar or a folder, relative to its root, sorted."""
    source = Path(source)
    if source.is_dir():
        return sorted(
            p.relative_to(source).as_posix()
            for p in source.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
    if source.is_file():
        try:
            with tarfile.open(source) as tar:
                return sorted(m.name for m in tar.getmembers() if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES)
        except tarfile.TarError as e:
            raise FileFormatError(source, f"not a readable tar ({e})") from None
    raise FileFormatError(source, "no such folder or tar file")


def _source_files(source: Path, paths: Sequence[str]) -> Iterable[tuple[str, bytes]]:
    """``(name for messages, file bytes)`` of each of ``paths`` (from :func:`list_source`), in order."""
    if source.is_dir():
        for p in paths:
            yield str(source / p), (source / p).read_bytes()
        return
    with tarfile.open(source) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        for p in paths:
            yield f"{source}:{p}", tar.extractfile(members[p]).read()


def decode_source(
    source: str | os.PathLike, paths: Sequence[str], resolution: int, crop: int, *,
    max_pixels: int = MAX_IMAGE_PIXELS, framing: str = "square",
) -> np.ndarray:
    """Decodes ``paths`` (from :func:`list_source`) of a tar or folder: uint8 ``[len(paths), R, R, 3]``.

    Raises:
      BadImage: one of them cannot be used (for chosen files; :func:`decode_readable` skips instead).
    """
    out = np.empty((len(paths), resolution, resolution, 3), np.uint8)
    for i, (name, data) in enumerate(_source_files(Path(source), paths)):
        out[i] = _decode(name, data, resolution, crop, max_pixels, framing)
    return out


def decode_readable(
    source: str | os.PathLike, paths: Sequence[str], resolution: int, crop: int, *,
    max_pixels: int = MAX_IMAGE_PIXELS, framing: str = "square", log: Log = to_stderr,
) -> tuple[np.ndarray, list[str], list[dict]]:
    """Decodes the usable ones of ``paths``: ``(uint8 [K, R, R, 3], their K paths, skipped)``; each file that
    cannot be used (over ``max_pixels``, several frames, undecodable, truncated) is reported in one line and
    listed in ``skipped`` (``image``: its path inside the source, ``reason``)."""
    out = np.empty((len(paths), resolution, resolution, 3), np.uint8)
    kept: list[str] = []
    skipped: list[dict] = []
    for p, (name, data) in zip(paths, _source_files(Path(source), paths)):
        try:
            out[len(kept)] = _decode(name, data, resolution, crop, max_pixels, framing)
        except FileFormatError as e:
            log(f"skipped {e}")
            skipped.append(dict(image=p, reason=e.problem))
            continue
        kept.append(p)
    return out[: len(kept)], kept, skipped


def cache_stem(source: str | os.PathLike, resolution: int, crop: int, max_images: int | None,
               framing: str = "square") -> str:
    """The cache file name (without suffix) for a source and preprocessing."""
    name = Path(source).name.split(".")[0]
    frame_part = f"_c{crop}" if framing == "square" else f"_{framing}"
    return f"{name}_r{resolution}{frame_part}" + (f"_n{max_images}" if max_images else "")


def load_faces(
    source: str | os.PathLike,
    resolution: int,
    *,
    crop: int = DEFAULT_CROP,
    cache_dir: str | os.PathLike | None = None,
    max_images: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
    framing: str = "square",
    log: Log = to_stderr,
) -> FaceDataset:
    """All usable images of ``source`` (or of its first ``max_images`` paths in sorted order), preprocessed; a
    file that cannot be used is reported in one line, skipped and listed in :attr:`FaceDataset.skipped`.

    With ``cache_dir``, the decoded array is read from (or written to) the cache; a cache made from another
    path list, or under another reading policy or pixel limit, is rebuilt. The cache's ``.json`` lists the
    skipped files with their reasons.

    Raises:
      FileFormatError: no images in ``source``, or none of them usable.
    """
    paths = list_source(source)
    if max_images:
        paths = paths[:max_images]
    if not paths:
        raise FileFormatError(source, "no images found")
    reading = reading_settings(max_pixels)
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        stem = cache_stem(source, resolution, crop, max_images, framing)
        array_path, list_path, meta_path = (cache_dir / f"{stem}{ext}" for ext in (".npy", ".txt", ".json"))
        cached = _cached(array_path, list_path, meta_path, paths, resolution, reading)
        if cached is not None:
            return cached
    images, kept, skipped = decode_readable(source, paths, resolution, crop, max_pixels=max_pixels, framing=framing,
                                            log=log)
    if not kept:
        raise FileFormatError(source, f"none of its {len(paths)} images is usable")
    if skipped:
        log(f"data: {len(skipped)} of {len(paths)} images of {source} skipped (unusable)")
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_save_npy(array_path, images)
        atomic_write_bytes(list_path, ("\n".join(kept) + "\n").encode())
        atomic_write_bytes(meta_path, json.dumps({
            "source": str(source), "resolution": resolution, "crop": crop, "framing": framing, "count": len(kept),
            "listed": len(paths),
            "skipped": skipped, "reading": reading}).encode())
    return FaceDataset(images, tuple(kept), tuple(skipped))


def _cached(array_path: Path, list_path: Path, meta_path: Path, paths: list[str], resolution: int,
            reading: dict) -> FaceDataset | None:
    """The cached dataset when it was decoded from ``paths`` under ``reading``, else None."""
    if not (array_path.exists() and list_path.exists() and meta_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        skipped = tuple(meta["skipped"])
        kept = list_path.read_text().splitlines()
        skipped_paths = {e["image"] for e in skipped}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if meta.get("reading") != reading or kept != [p for p in paths if p not in skipped_paths] or \
            not skipped_paths <= set(paths):
        return None
    images = np.load(array_path, mmap_mode=None, allow_pickle=False)
    if images.shape != (len(kept), resolution, resolution, 3) or images.dtype != np.uint8:
        return None
    return FaceDataset(images, tuple(kept), skipped)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Positions ``[batch_size]`` into a set of ``n`` items for iteration ``step``: epochs are seeded
    permutations of ``range(n)`` read in order, so every item is seen once per epoch and a resumed run
    continues the same sequence."""
    start = step * batch_size
    out = np.empty(batch_size, np.int64)
    i = 0
    while i < batch_size:
        epoch, pos = divmod(start + i, n)
        take = min(batch_size - i, n - pos)
        out[i : i + take] = _epoch_permutation(n, seed, epoch)[pos : pos + take]
        i += take
    return out


def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)

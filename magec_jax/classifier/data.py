"""Classifier data: a ``list_attr_celeba.txt``-format attribute table, the train/validation split, and a
threaded image loader whose batch order depends only on (seed, epoch, step), so resumed runs see the same
batches."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import threading
from pathlib import Path

import numpy as np

from magec_jax.classifier.config import TrainConfig
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.images import MAX_IMAGE_PIXELS, load_image
from magec_jax.logs import Log


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Image paths with their binary labels ``[N, K]`` (1 where the table says 1)."""

    paths: tuple[Path, ...]
    labels_NxK: np.ndarray
    attribute_names: tuple[str, ...]


def read_attribute_table(table: Path, images: Path, names: tuple[str, ...] = ()) -> Dataset:
    """Reads a ``list_attr_celeba.txt``-format table; ``names`` selects columns (empty: all).

    Raises:
      FileFormatError: naming the table (and line) for a malformed table, unknown attribute or missing image.
    """
    try:
        lines = [ln.split() for ln in table.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise FileFormatError(table, f"unreadable attribute table ({e.__class__.__name__})") from None
    if len(lines) < 2 or len(lines[0]) != 1 or not lines[0][0].isdigit():
        raise FileFormatError(table, "not a list_attr_celeba.txt table: expected a count line, then a header line")
    header, rows = lines[1], lines[2:]
    if int(lines[0][0]) != len(rows):
        raise FileFormatError(table, f"the count line says {lines[0][0]} rows, the table has {len(rows)}")
    unknown = [n for n in names if n not in header]
    if unknown:
        raise FileFormatError(table, f"no attribute {unknown[0]!r} in the header")
    columns = [header.index(n) for n in names] if names else list(range(len(header)))
    paths, labels = [], []
    for line_no, row in enumerate(rows, start=3):
        if len(row) != len(header) + 1 or any(v not in ("1", "-1") for v in row[1:]):
            raise FileFormatError(table, f"line {line_no}: expected a name and {len(header)} values of 1 or -1")
        paths.append(images / row[0])
        labels.append([row[1 + c] == "1" for c in columns])
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileFormatError(table, f"{len(missing)} listed images are missing from {images}, e.g. {missing[0].name}")
    return Dataset(tuple(paths), np.asarray(labels, np.float32), tuple(header[c] for c in columns))


def split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices: a seeded permutation, ``round(val_fraction * n)`` (at least 1) for validation."""
    order = np.random.default_rng([seed, 0]).permutation(n)
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def epoch_batches(n_train: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """``[steps_per_epoch, batch_size]`` positions into the train split for one epoch (last partial batch dropped)."""
    order = np.random.default_rng([seed, 1, epoch]).permutation(n_train)
    steps = n_train // batch_size
    return order[: steps * batch_size].reshape(steps, batch_size)


class Loader:
    """Decodes batches of images on a thread pool, one batch ahead.

    Each image is read and framed by :func:`magec_jax.images.load_image` with ``framing`` (``"square"``: the
    centred square; ``"letterbox"``: the whole image on black). An image that cannot be used (over
    ``max_pixels``, several frames, undecodable, truncated, transparent) is reported once in one line,
    remembered in :attr:`skipped`, and its row of the batch is filled with the batch's first usable image (and
    that image's labels: see :meth:`submit`), so batches keep their shape and a resumed run sees the same batches.
    """

    def __init__(self, paths: tuple[Path, ...], image_size: int, num_workers: int, *,
                 max_pixels: int = MAX_IMAGE_PIXELS, framing: str = "square", log: Log = print):
        self._paths, self._size, self._max_pixels, self._log = paths, image_size, max_pixels, log
        self._framing = framing
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, num_workers))
        self._lock = threading.Lock()
        self.skipped: dict[int, str] = {}  # index into paths -> reason

    def _load(self, i: int) -> np.ndarray | None:
        try:
            return load_image(self._paths[i], self._size, min_size=1, max_pixels=self._max_pixels,
                              framing=self._framing)
        except FileFormatError as e:
            with self._lock:
                first = i not in self.skipped
                self.skipped[i] = e.problem
            if first:
                self._log(f"skipped {e}")
            return None

    def _assemble(self, indices: np.ndarray, futures: list) -> tuple[np.ndarray, np.ndarray]:
        arrays = [f.result() for f in futures]
        used = np.asarray(indices).copy()
        usable = [k for k, a in enumerate(arrays) if a is not None]
        if usable:
            fill_index, fill = used[usable[0]], arrays[usable[0]]
        else:  # a batch of unusable images only: the next usable image of the data set stands in
            fill_index, fill = self._next_usable(int(indices[0]))
        for k, a in enumerate(arrays):
            if a is None:
                arrays[k], used[k] = fill, fill_index
        return np.stack(arrays), used

    def _next_usable(self, start: int) -> tuple[int, np.ndarray]:
        n = len(self._paths)
        for j in (start + 1 + k for k in range(n)):
            array = self._load(j % n)
            if array is not None:
                return j % n, array
        raise MagecError(f"none of the {n} images can be used (see the lines above)")

    def submit(self, indices: np.ndarray) -> concurrent.futures.Future:
        """Starts decoding ``paths[indices]``; the future gives ``(images [len(indices), S, S, 3] in [-1, 1],
        used [len(indices)])``: the index of the image each row holds (``indices``, with each unusable image's
        replaced by the one standing in for it)."""
        futures = [self._pool.submit(self._load, int(i)) for i in indices]
        return self._pool.submit(self._assemble, indices, futures)

    def skipped_images(self) -> list[dict]:
        """The unusable images met so far, ``{image, reason}``, in data-set order."""
        with self._lock:
            return [dict(image=str(self._paths[i]), reason=r) for i, r in sorted(self.skipped.items())]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def train_batches(
    loader: Loader, train: np.ndarray, labels_NxK: np.ndarray, cfg: TrainConfig, start: int, stop: int
):
    """Yields ``(step, images, labels, flips)`` for steps ``start .. stop - 1``, decoding one batch ahead (an
    unusable image's row holds its stand-in's image and labels, see :class:`Loader`).

    The order is a function of (seed, epoch, step) only, so a resumed run sees the batches it would have seen.
    """
    steps_per_epoch = len(train) // cfg.batch_size

    @functools.lru_cache(maxsize=2)
    def epoch_plan(epoch: int) -> tuple[np.ndarray, np.ndarray]:
        order = epoch_batches(len(train), cfg.batch_size, cfg.seed, epoch)
        flips = np.random.default_rng([cfg.seed, 2, epoch]).random(order.shape) < (0.5 if cfg.flip else 0.0)
        return train[order], flips

    def plan(step: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, position = divmod(step, steps_per_epoch)
        indices, flips = epoch_plan(epoch)
        return indices[position], flips[position]

    upcoming = loader.submit(plan(start)[0]) if start < stop else None
    for step in range(start, stop):
        indices, flips = plan(step)
        images, used = upcoming.result()
        if step + 1 < stop:
            upcoming = loader.submit(plan(step + 1)[0])
        yield step, images, labels_NxK[used], flips


"""Photographs in and out: faces found, aligned to a generator's framing, and inverted faces pasted back.

The library behind ``python -m magec_jax.align`` and the inversion job's ``config.align``::

    photographs --list_photos--> PhotoInput --align_photos (batched detection, warp)--> aligned crops + records
        --(inversion)--> reconstructions --paste_reconstructions--> pasted/<name>.png

* :class:`Framing`: how a generator's training images were framed: NVIDIA's FFHQ crop at a size, or a
  :class:`~magec_jax.faces.align.Template` of the four face points (fitted on the generator's own samples by
  :func:`fit_generator_template`, or on its training images by :func:`fit_template_on_images`).
* :func:`align_photos`: every photograph's faces, one detector call per batch of photographs, each face warped
  to the framing (NVIDIA's border handling). Per face ``<name>__face<j>`` (``j`` counts the photograph's faces
  from left to right) it writes ``<name>__face<j>.png`` (the aligned crop) and ``<name>__face<j>.json``
  (:func:`face_record`); ``summary.json`` holds every photograph's outcome. A face too small to invert
  (:func:`~magec_jax.faces.align.face_size_problem`) is reported with its size and gets no crop; a photograph
  with no face, or one that cannot be read, is reported with the reason. Every file is written atomically, and
  a rerun redoes only the photographs whose file or settings changed (skipped ones are remembered too).
* :func:`paste_reconstructions`: each photograph with every inverted face's reconstruction warped back and
  feathered in (:func:`~magec_jax.faces.paste.paste_back`).

Photographs are read by :func:`read_photo`: the reading policy of ``magec_jax.images.open_image`` (the pixel
limit checked from the header before decoding, one frame, EXIF orientation applied, CMYK and 16-bit made 8-bit)
and its input policy (RGB, grey, and RGBA/P only when opaque) without the square crop, so that a pasted
photograph has the size and orientation in which the photograph is displayed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np
from PIL import Image

from magec_jax import images as imio
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.faces.align import (MIN_QUAD_FRACTION, Alignment, AlignmentError, Template, adaptive_transform_size,
                                   face_size_problem, fit_template, warp)
from magec_jax.faces.detect import DetectorConfig, FaceDetector
from magec_jax.faces.paste import paste_back
from magec_jax.logs import Log, to_stderr
from magec_jax.models import stylegan2
from magec_jax.weights import sha256_file

SUMMARY = "summary.json"
PASTED = "pasted"
NO_FACE = "no face found"
_FACE_FILE = re.compile(r"__face\d+\.(png|json)$")



# ---- framing -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Framing:
    """How a generator's training images were framed: FFHQ at ``size`` (``template`` None), or a template of
    the four face points in crops of ``template.size`` (then ``size == template.size``)."""

    size: int
    template: Template | None = None

    def __post_init__(self):
        if not (isinstance(self.size, (int, np.integer)) and self.size > 0):
            raise AlignmentError(f"framing size must be a positive integer, got {self.size!r}")
        if self.template is not None and self.template.size != self.size:
            raise AlignmentError(f"framing size {self.size} differs from its template's {self.template.size}")

    @classmethod
    def ffhq(cls, size: int) -> Framing:
        """NVIDIA's FFHQ crop at ``size`` pixels."""
        return cls(int(size))

    @classmethod
    def of_template(cls, template: Template) -> Framing:
        """Crops that put the four points where ``template`` has them."""
        return cls(template.size, template)

    @property
    def kind(self) -> str:
        """``"ffhq"`` or ``"template"``."""
        return "ffhq" if self.template is None else "template"

    def align(self, points_4x2: Any) -> Alignment:
        """The alignment of a face with these four points (photograph pixels)."""
        if self.template is None:
            return Alignment.ffhq(points_4x2, self.size)
        return Alignment.to_template(points_4x2, self.template)

    def to_json(self) -> dict[str, Any]:
        """``{"kind": "ffhq", "size": S}`` or ``{"kind": "template", "size": S, "template": {...}}``."""
        out: dict[str, Any] = {"kind": self.kind, "size": self.size}
        if self.template is not None:
            out["template"] = self.template.to_json()
        return out


def alignment_settings(framing: Framing, detector: DetectorConfig = DetectorConfig()) -> dict[str, Any]:
    """Everything that decides a photograph's aligned crops, as JSON-ready data (a result's fingerprint): the
    framing, the detector's settings (but its batch size) and the face-size rule."""
    found = {k: v for k, v in dataclasses.asdict(detector).items() if k != "batch_size"}
    return json.loads(json.dumps(dict(framing=framing.to_json(), detector=found,
                                      min_quad_fraction=MIN_QUAD_FRACTION, transform="adaptive")))


def _settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# ---- photographs -------------------------------------------------------------------------------------------


class PhotoInput(NamedTuple):
    """A photograph to align: its file, its output name, and its file's sha256 (None: not readable)."""

    path: Path
    name: str
    sha256: str | None


def list_photos(source: str | Path, *, exclude: str | Path | None = None) -> tuple[list[PhotoInput], list[dict]]:
    """The photographs of a folder (recursive) or list file, named as the inversion job names its inputs
    (``magec_jax.images.output_name``), and the ones skipped because an earlier one took their name.

    Raises:
      FileFormatError: ``source`` is missing or holds no image.
    """
    paths = imio.list_images(source, exclude=exclude)
    if not paths:
        kind = "folder" if Path(source).is_dir() else "list file"
        raise FileFormatError(source, f"no images in this {kind} (expected {', '.join(imio.IMAGE_SUFFIXES)})")
    root = Path(source) if Path(source).is_dir() else None
    taken: dict[str, Path] = {}
    photos, duplicates = [], []
    for path in paths:
        name = imio.output_name(path, root)
        if name in taken:
            duplicates.append(dict(image=str(path), reason=f"its output name {name!r} is taken by {taken[name]}; "
                                                          "rename one of them"))
            continue
        taken[name] = path
        try:
            digest = sha256_file(path)
        except OSError:
            digest = None
        photos.append(PhotoInput(path, name, digest))
    return photos, duplicates


def read_photo(path: str | Path, *, max_pixels: int = imio.MAX_IMAGE_PIXELS) -> np.ndarray:
    """A photograph as uint8 ``[H, W]`` (grey), ``[H, W, 3]`` (RGB) or ``[H, W, 4]`` (opaque RGBA), read by
    ``magec_jax.images.open_image`` (the pixel limit ``max_pixels`` checked before decoding, one frame, upright
    by its EXIF orientation, CMYK and 16-bit converted to 8 bits).

    Raises:
      FileFormatError: missing, unreadable or refused by the reading policy, or transparent pixels.
    """
    path = Path(path)
    im = imio.open_image(path, max_pixels=max_pixels)
    if im.mode in ("RGB", "L"):
        return np.asarray(im)
    rgb = imio.opaque_rgb(path, im)  # refuses transparent pixels
    return np.asarray(im) if im.mode == "RGBA" else np.asarray(rgb)


# ---- aligning ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AlignedFace:
    """One face ready to invert.

    Attributes:
      name: ``<photo name>__face<j>``.
      crop: the aligned crop's file.
      photo: the photograph's file.
      photo_name: the photograph's output name.
      index: ``j``, the face's rank from the left in its photograph.
      alignment: where the crop lies in the photograph.
      score: BlazeFace's probability that this is a face.
    """

    name: str
    crop: Path
    photo: Path
    photo_name: str
    index: int
    alignment: Alignment
    score: float


@dataclasses.dataclass(frozen=True)
class AlignReport:
    """What :func:`align_photos` found, for every photograph listed (this run's and earlier runs').

    Attributes:
      faces: every face with a crop, in photograph order then left to right.
      skipped: one entry per photograph with no face or that cannot be read, and per face too small to invert
        (``image``, ``reason``; faces also ``face``, their name), each a one-line reason.
      detected: photographs this run ran the detector on (0: everything was found done).
    """

    faces: tuple[AlignedFace, ...]
    skipped: tuple[dict, ...]
    detected: int


def face_record(face: AlignedFace, photo_hw: tuple[int, int], settings: dict[str, Any],
                photo_sha256: str | None) -> dict[str, Any]:
    """A face's JSON: ``landmarks`` (``eye_left``, ``eye_right``, ``mouth_left``, ``mouth_right``, each ``[x, y]``
    in photograph pixels), ``quad`` (4 corners in photograph pixels, NVIDIA's order: top-left, bottom-left,
    bottom-right, top-right of the crop), ``output_size``, ``score``, ``photo_size`` ``[width, height]``, and
    where it came from (``image``, ``face``, ``input_sha256``, the ``framing`` and detector ``settings``)."""
    return dict(face.alignment.to_json(), score=face.score, photo_size=[photo_hw[1], photo_hw[0]],
                image=str(face.photo), face=face.index, input_sha256=photo_sha256, settings=settings)


def align_photos(photos: Sequence[PhotoInput], out_dir: str | Path, framing: Framing, *,
                 detector: FaceDetector | None = None, batch_size: int = 32,
                 max_pixels: int = imio.MAX_IMAGE_PIXELS, log: Log = to_stderr) -> AlignReport:
    """Aligns every face of every photograph into ``out_dir`` (see the module docstring); resumable.

    Args:
      photos: the photographs (:func:`list_photos`).
      out_dir: where the crops, their records and ``summary.json`` go.
      framing: the crops' framing and size.
      detector: the face detector (default: the shipped weights with :class:`DetectorConfig`'s defaults),
        loaded only when a photograph needs detecting.
      batch_size: photographs per detector call.
      max_pixels: the pixel limit (``max_image_pixels``): a larger photograph is refused before decoding. It
        does not change what is computed from a photograph under it, so it is not part of the settings; a
        photograph refused (for any reason) is tried again when the limit changes.
      log: where one-line reports go.
    """
    if batch_size < 1:
        raise MagecError(f"batch size must be at least 1, got {batch_size}")
    out = Path(out_dir)
    config = detector.config if detector is not None else DetectorConfig()
    settings = alignment_settings(framing, config)
    key = _settings_hash(settings)
    reading = imio.reading_settings(max_pixels)  # a refused photograph is remembered only under these
    previous = {e.get("name"): e for e in _read_json(out / SUMMARY).get("photos", []) if isinstance(e, dict)}
    records: dict[str, dict] = {}
    todo = []
    for photo in photos:
        entry = previous.get(photo.name)
        if entry and entry.get("sha256") == photo.sha256 and entry.get("settings") == key and all(
                (out / f"{f}{ext}").is_file() for f in entry.get("faces", []) for ext in (".png", ".json")) and (
                not entry.get("problem") or entry.get("reading") == reading):
            records[photo.name] = entry
        else:
            todo.append(photo)
    if todo:
        log(f"align: {len(photos)} photographs, {len(photos) - len(todo)} already done, {len(todo)} to detect "
            f"({framing.kind} framing at {framing.size} px)")
        out.mkdir(parents=True, exist_ok=True)
        for tmp in out.glob(".*.*"):  # half-written files of a killed run
            tmp.unlink(missing_ok=True)
        detector = detector if detector is not None else FaceDetector.load()
        for start in range(0, len(todo), batch_size):
            for photo, record in _align_batch(todo[start:start + batch_size], out, framing, detector, settings,
                                              max_pixels, log):
                records[photo.name] = dict(record, name=photo.name, image=str(photo.path), sha256=photo.sha256,
                                           settings=key, reading=reading)
            listed = [records[p.name] for p in photos if p.name in records]
            imio.atomic_write_json(out / SUMMARY, _summary(listed, framing, settings, len(photos)))
    elif photos:
        imio.atomic_write_json(out / SUMMARY, _summary([records[p.name] for p in photos], framing, settings,
                                                       len(photos)))
    faces, skipped = [], []
    for photo in photos:
        record = records[photo.name]
        if record.get("problem"):
            skipped.append(dict(image=str(photo.path), reason=record["problem"], sha256=photo.sha256))
        skipped += [dict(image=str(photo.path), face=s["face"], reason=s["reason"])
                    for s in record.get("skipped_faces", [])]
        for name in record.get("faces", []):
            stored = _read_json(out / f"{name}.json")
            faces.append(AlignedFace(name=name, crop=out / f"{name}.png", photo=photo.path, photo_name=photo.name,
                                     index=int(stored["face"]), alignment=Alignment.from_json(stored),
                                     score=float(stored["score"])))
    return AlignReport(tuple(faces), tuple(skipped), len(todo))


def _align_batch(batch: Sequence[PhotoInput], out: Path, framing: Framing, detector: FaceDetector,
                 settings: dict[str, Any], max_pixels: int, log: Log) -> list[tuple[PhotoInput, dict]]:
    """Reads, detects (one detector call) and aligns one batch; writes each face; returns each photograph's
    record (``faces``, ``skipped_faces``, ``problem``)."""
    results: list[tuple[PhotoInput, dict]] = []
    readable: list[tuple[PhotoInput, np.ndarray]] = []
    for photo in batch:
        try:
            readable.append((photo, read_photo(photo.path, max_pixels=max_pixels)))
        except FileFormatError as e:
            log(f"skipped {photo.path}: {e.problem}")
            results.append((photo, dict(faces=[], skipped_faces=[], problem=e.problem)))
    detected = detector.detect([pixels for _, pixels in readable]) if readable else []
    for (photo, pixels), found in zip(readable, detected):
        for stale in out.glob(f"{_glob_escape(photo.name)}__face*"):
            if _FACE_FILE.fullmatch(stale.name[len(photo.name):]):
                stale.unlink()
        if not found:
            log(f"skipped {photo.path}: {NO_FACE}")
            results.append((photo, dict(faces=[], skipped_faces=[], problem=NO_FACE)))
            continue
        ordered = sorted(found, key=lambda f: float(np.mean(f.points_4x2[:, 0])))
        names, skipped_faces = [], []
        for j, detection in enumerate(ordered):
            name = f"{photo.name}__face{j}"
            try:
                alignment = framing.align(detection.points_4x2)
            except AlignmentError as e:
                skipped_faces.append(dict(face=name, reason=str(e)))
                continue
            problem = face_size_problem(alignment)
            if problem is not None:
                log(f"skipped {name} of {photo.path}: {problem}")
                skipped_faces.append(dict(face=name, reason=problem))
                continue
            face = AlignedFace(name, out / f"{name}.png", photo.path, photo.name, j, alignment, float(detection.score))
            crop = warp(pixels, alignment, adaptive_transform_size(alignment))
            imio.atomic_write_bytes(face.crop, imio.png_bytes(crop))
            imio.atomic_write_json(out / f"{name}.json", face_record(face, pixels.shape[:2], settings, photo.sha256))
            names.append(name)
        results.append((photo, dict(faces=names, skipped_faces=skipped_faces, problem=None)))
    return results


def _glob_escape(text: str) -> str:
    """``text`` with glob's special characters (``*?[``) matched literally."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _summary(records: list[dict], framing: Framing, settings: dict[str, Any], listed: int) -> dict[str, Any]:
    """``summary.json`` of an alignment folder: the framing and settings, counts, ``no_face`` and
    ``unreadable`` photographs and ``skipped_faces`` (too small, with the size), each with its reason, and
    ``photos``: every photograph's record (its faces; what a rerun checks)."""
    return dict(
        framing=framing.to_json(), settings=settings, photos_listed=listed,
        faces=sum(len(r["faces"]) for r in records),
        no_face=[dict(image=r["image"], reason=r["problem"]) for r in records if r.get("problem") == NO_FACE],
        unreadable=[dict(image=r["image"], reason=r["problem"]) for r in records
                    if r.get("problem") and r["problem"] != NO_FACE],
        skipped_faces=[dict(image=r["image"], **s) for r in records for s in r["skipped_faces"]],
        photos=records,
    )


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# ---- pasting back ------------------------------------------------------------------------------------------


def by_photo(faces: Sequence[AlignedFace]) -> dict[str, list[AlignedFace]]:
    """Faces grouped by their photograph's output name, in order."""
    groups: dict[str, list[AlignedFace]] = {}
    for face in faces:
        groups.setdefault(face.photo_name, []).append(face)
    return groups


def up_to_date(target: Path, sources: Sequence[Path]) -> bool:
    """Whether ``target`` exists and is newer than every source file."""
    if not target.is_file():
        return False
    stamp = target.stat().st_mtime_ns
    return all(s.stat().st_mtime_ns <= stamp for s in sources)


def read_rgb(path: Path) -> np.ndarray:
    """An image the job or the edit tool wrote (a face crop, an edit grid), as uint8 ``[H, W, 3]``."""
    return np.asarray(imio.open_image(path).convert("RGB"))


def write_pasted(target: Path, photo: Path, crops: Sequence[tuple[np.ndarray, Alignment]], *,
                 max_pixels: int = imio.MAX_IMAGE_PIXELS) -> Path:
    """Writes ``target`` (PNG): the photograph at its own size with every crop pasted back."""
    return imio.atomic_write_bytes(target, imio.png_bytes(paste_back(read_photo(photo, max_pixels=max_pixels), crops)))


def paste_reconstructions(faces: Sequence[AlignedFace], results_dir: str | Path, *,
                          max_pixels: int = imio.MAX_IMAGE_PIXELS, log: Log = to_stderr) -> list[Path]:
    """``results_dir/pasted/<photo name>.png`` for every photograph with at least one inverted face (an item
    whose ``<face name>.png`` and ``.json`` the inversion job wrote): every such reconstruction pasted back.
    A pasted photograph newer than its photograph and reconstructions is left as it is; returns those written."""
    results = Path(results_dir)
    written = []
    for photo_name, group in by_photo(faces).items():
        done = [f for f in group if (results / f"{f.name}.png").is_file() and (results / f"{f.name}.json").is_file()]
        if not done:
            continue
        target = results / PASTED / f"{photo_name}.png"
        sources = [results / f"{f.name}.png" for f in done]
        if up_to_date(target, sources + [done[0].photo]):
            continue
        try:
            write_pasted(target, done[0].photo, [(read_rgb(s), f.alignment) for s, f in zip(sources, done)],
                         max_pixels=max_pixels)
        except FileFormatError as e:
            log(f"not pasted {photo_name}: {e}")
            continue
        written.append(target)
    if written:
        log(f"pasted {len(written)} photograph(s) -> {results / PASTED}")
    return written


# ---- templates ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TemplateFit:
    """A template fitted on N images: the template, how many images had a face, and the points' spread (root
    mean square distance to the template, crop pixels)."""

    template: Template
    found: int
    images: int
    spread: float


def fit_template_on_images(images_NxSxSx3: np.ndarray, detector: FaceDetector | None = None, *,
                           upsample: int = 4, batch_size: int = 32) -> TemplateFit:
    """The template of N square images framed alike (a generator's samples or its training crops): each image
    enlarged ``upsample`` times (Lanczos) for the detector, its most confident face's four points brought back
    to the image's pixels, and the points averaged over the images with a face.

    Raises:
      MagecError: the images are not uint8 ``[N, S, S, 3]``, or no image has a face.
    """
    images = np.asarray(images_NxSxSx3)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] != 3:
        raise MagecError(f"template fit needs uint8 [N, S, S, 3] images, got {images.dtype} {list(images.shape)}")
    size = images.shape[1]
    detector = detector if detector is not None else FaceDetector.load()
    points = []
    for start in range(0, len(images), batch_size):
        big = [np.asarray(Image.fromarray(im).resize((size * upsample,) * 2, Image.LANCZOS))
               for im in images[start:start + batch_size]]
        points += [(found[0].points_4x2 + 0.5) / upsample - 0.5 for found in detector.detect(big) if found]
    if not points:
        raise MagecError(f"template fit: no face found in any of the {len(images)} images")
    pts = np.stack(points)
    template = fit_template(pts, size)
    spread = float(np.sqrt(np.mean(np.sum((pts - template.points()) ** 2, axis=-1))))
    return TemplateFit(template, len(points), len(images), spread)


def fit_generator_template(cfg: Any, variables: Any, *, num_samples: int = 256, seed: int = 0,
                           batch_size: int = 32, detector: FaceDetector | None = None) -> TemplateFit:
    """The template of a StyleGAN2 generator's own samples (:func:`fit_template_on_images`): ``num_samples``
    images from z ~ N(0, I) (typed key ``seed``), no truncation, constant noise.

    Args:
      cfg, variables: the generator (``magec_jax.models.stylegan2.load_generator``; a bundle's ``generator``).
    """
    if cfg.c_dim:
        raise MagecError("template fit: class-conditional generators are not supported (fit on training images)")
    model = stylegan2.Generator(cfg)
    render = jax.jit(lambda v, z: model.apply(v, z, None, noise_mode="const"))
    key = jax.random.key(seed)
    images = []
    for start in range(0, num_samples, batch_size):
        z = jax.random.normal(jax.random.fold_in(key, start), (batch_size, cfg.z_dim))
        images.append(imio.to_uint8(np.asarray(render(variables, z)))[: num_samples - start])
    return fit_template_on_images(np.concatenate(images), detector, batch_size=batch_size)

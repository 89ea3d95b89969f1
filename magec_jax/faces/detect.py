"""Faces and their 468 FaceMesh landmarks in photographs: BlazeFace, then FaceMesh, batched.

    detector = FaceDetector.load()                        # the weights shipped in magec_jax/faces/weights/
    faces_per_photo = detector.detect([photo_u8, ...])    # list (per photograph) of lists of Face
    points_4x2 = faces_per_photo[0][0].points_4x2         # eye_left, eye_right, mouth_left, mouth_right

The steps, for a batch of photographs (uint8 RGB; grey is replicated, an alpha channel dropped):

1. **Detector input.** Each photograph is letterboxed to a square (centred on a black canvas of its longer
   side; never squashed) and resized to 256x256 by bilinear sampling without antialiasing, as Human and
   MediaPipe feed BlazeFace. ``squash=True`` resizes the whole frame to 256x256 instead, as Human does.
2. **BlazeFace, decoding and NMS** in one jitted call for the whole batch: anchor decoding (box centre and
   size, 6 keypoints), scores through a sigmoid, then greedy non-maximum suppression per photograph (score
   above ``score_threshold``, suppressing boxes whose IoU with a kept one exceeds ``iou_threshold``, at most
   ``max_faces``), as ``tf.image.nonMaxSuppression`` does in Human.
3. **Crops.** Each face's square crop has the box's centre and ``box_scale`` times its longer side, rotated
   (``rotate=True``) so that BlazeFace's two eye keypoints lie on a horizontal line when they are tilted by
   more than ``min_rotation``: the face is upright in the crop whatever its angle in the photograph. Cut from
   the full-resolution photograph with bilinear sampling; outside the photograph is black.
4. **FaceMesh** on all crops of the batch in one jitted call; a crop whose face flag is below
   ``mesh_threshold`` is dropped (not a face). The 468 landmarks are mapped back through the crop's rotation
   and scale to photograph pixels.
5. **Refinement** (optional, ``refine=True``): FaceMesh runs once more, on crops made from its first landmarks (upright
   on the line of the two eye centres, centred on the landmarks, ``box_scale`` times their extent), as
   MediaPipe does when it tracks a face. The crop then follows the face rather than BlazeFace's coarse box
   and keypoints (whose eye line is off by up to 5 degrees), and the landmarks vary less with the
   photograph's framing. Measured, in crop pixels (``side / 192`` photograph pixels): the 26 CelebA-HQ faces
   at 1024 px against the same at 512 px, 0.35 RMS in one pass, 0.19 refined; a face rotated by 25 degrees
   against the upright face rotated, 0.77 RMS in one pass (alignment points within 1.2), 0.36 refined (0.6).
   The outline points (forehead, jaw) follow the crop's framing, so refined landmarks are further from
   Human's, which come from BlazeFace's box: that is why it is not the default.

Coordinates are photograph pixels with pixel centres at integers (``x`` = column index, ``y`` = row index), as
dlib and NVIDIA's FFHQ alignment script use them. A landmark's ``z`` is FaceMesh's relative depth, scaled to
the same pixels.

Agreement with Human 3.3.6 (``../shared/fixtures/face_landmarks``, ``tests/test_faces_detect.py``): with
:meth:`DetectorConfig.human` (its squashing, its rotation rule), every face Human finds is found and every
landmark is within 0.5 px + 1.5 crop pixels of Human's (LFW's 250-px photographs: under 1 px; 512-px CelebA-HQ:
under 2.5 px), with no bias. The defaults differ from it only where Human errs: letterboxing (Human's squashed
2:1 frame puts faces tens of pixels off; letterboxed, a face gets the landmarks it has in its photograph
alone) and the eye line for rotation (Human's mouth-nose line tilts upright faces by 10-15 degrees). On
square photographs of upright faces the defaults give Human's landmarks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from magec_jax.errors import MagecError
from magec_jax.models import blazeface, facemesh
from magec_jax.weights import load_converted

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# The four points an alignment needs (names as in magec_jax.faces.align), and the FaceMesh landmarks that make
# them: the mean of each eye's six contour points, and the mouth corners. "left" is the image's left.
ALIGNMENT_POINTS = ("eye_left", "eye_right", "mouth_left", "mouth_right")
EYE_LEFT = (33, 160, 158, 133, 153, 144)
EYE_RIGHT = (362, 385, 387, 263, 373, 380)
MOUTH_LEFT, MOUTH_RIGHT = 61, 291
ROTATION_LINES = ("eyes", "mouth_nose")
# BlazeFace's box side over FFHQ's face size max(2 |eye_to_eye|, 1.8 |eye_to_mouth|) of FaceMesh's points, on
# average over 66 CelebA-HQ and LFW faces (standard deviation 0.14; the box centre lies at eye_avg + 0.50
# eye_to_mouth, standard deviation 0.09): the refined crop frames a face as the first pass does on average.
FACE_SIZE_FROM_POINTS = 1.28


class DetectionError(MagecError):
    """Bad input to the detector (an image of the wrong type or shape, or a bad setting)."""


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Settings of :class:`FaceDetector`. The thresholds and the crop scale are Human's; :meth:`human` gives
    all of Human 3.3.6's settings, which reproduce its landmarks (see the module docstring).

    Attributes:
      max_faces: most faces kept per photograph (NMS output size).
      score_threshold: minimum BlazeFace probability of a face (Human's ``minConfidence``).
      iou_threshold: NMS drops a box whose IoU with a kept box exceeds this (Human's ``iouThreshold``).
      box_scale: the FaceMesh crop's side over the longer side of BlazeFace's box (Human's ``scale``).
      mesh_threshold: minimum FaceMesh face-flag probability; a crop below it is not a face.
      rotate: rotate each crop so that the face is upright in it.
      rotation_line: the line that says which way is up: ``"eyes"`` (BlazeFace's two eye keypoints, made
        horizontal) or ``"mouth_nose"`` (its mouth-centre-to-nose-tip line, made vertical: Human's choice,
        off by 10-15 degrees on upright faces, because BlazeFace places the nose tip poorly).
      min_rotation: crops whose angle is at most this (radians; 0.2 is 11.5 degrees, Human's) are not rotated:
        FaceMesh handles such tilts, and BlazeFace's eye line is itself only good to about 5 degrees.
      refine: run FaceMesh a second time, on a crop made from its first landmarks (step 5).
      squash: resize the whole photograph to 256x256 for BlazeFace (Human's way, which distorts non-square
        photographs) instead of letterboxing it.
      batch_size: photographs per BlazeFace call (smaller batches are padded to a power of two).
      dtype: computation dtype of both networks (``"float32"`` or ``"bfloat16"``).
    """

    max_faces: int = 16
    score_threshold: float = 0.2
    iou_threshold: float = 0.1
    box_scale: float = 1.4
    mesh_threshold: float = 0.2
    rotate: bool = True
    rotation_line: str = "eyes"
    min_rotation: float = 0.2
    refine: bool = False
    squash: bool = False
    batch_size: int = 32
    dtype: str = "float32"

    def __post_init__(self) -> None:
        checks = {
            "max_faces": self.max_faces >= 1, "score_threshold": 0 <= self.score_threshold < 1,
            "iou_threshold": 0 <= self.iou_threshold <= 1, "box_scale": self.box_scale > 0,
            "mesh_threshold": 0 <= self.mesh_threshold < 1, "batch_size": self.batch_size >= 1,
            "dtype": self.dtype in ("float32", "bfloat16"), "rotation_line": self.rotation_line in ROTATION_LINES,
            "min_rotation": self.min_rotation >= 0,
        }
        for field, ok in checks.items():
            if not ok:
                raise DetectionError(f"DetectorConfig.{field} = {getattr(self, field)!r} is out of range")

    @classmethod
    def human(cls, *, rotate: bool = True) -> DetectorConfig:
        """The settings of Human 3.3.6 in the golden fixture (``detector.rotation = rotate``): squashed
        detector input, at most 5 faces, rotation on the mouth-nose line beyond 0.2 radians, one FaceMesh
        pass."""
        return cls(max_faces=5, rotate=rotate, rotation_line="mouth_nose", squash=True)


@dataclasses.dataclass(frozen=True)
class Crop:
    """The rotated square FaceMesh saw: ``centre`` (x, y) and ``side`` in photograph pixels, and ``angle`` in
    radians: the crop's x axis runs along ``(cos angle, sin angle)`` in the photograph (x right, y down), so a
    positive angle is clockwise on screen."""

    centre: tuple[float, float]
    side: float
    angle: float


@dataclasses.dataclass(frozen=True, eq=False)
class Face:
    """One detected face; every coordinate is in photograph pixels (pixel centres at integers).

    Attributes:
      box: BlazeFace's face box ``(x0, y0, x1, y1)`` (not enlarged).
      score: BlazeFace's probability that this is a face.
      mesh_score: FaceMesh's face-flag probability on the crop.
      mesh_468x3: the 468 landmarks ``(x, y, z)``, read-only float64.
      keypoints_6x2: BlazeFace's keypoints (the subject's right eye, left eye, nose tip, mouth centre, right
        ear, left ear), read-only float64.
      crop: the crop FaceMesh ran on.
    """

    box: tuple[float, float, float, float]
    score: float
    mesh_score: float
    mesh_468x3: np.ndarray
    keypoints_6x2: np.ndarray
    crop: Crop

    @property
    def size(self) -> float:
        """The longer side of :attr:`box`, in photograph pixels (how big the face is)."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])

    @property
    def points_4x2(self) -> np.ndarray:
        """The alignment points ``[4, 2]`` in :data:`ALIGNMENT_POINTS` order (see :func:`alignment_points`)."""
        return alignment_points(self.mesh_468x3)

    def alignment_points(self) -> dict[str, tuple[float, float]]:
        """``{"eye_left": (x, y), "eye_right": ..., "mouth_left": ..., "mouth_right": ...}``."""
        return {name: (float(x), float(y)) for name, (x, y) in zip(ALIGNMENT_POINTS, self.points_4x2)}


def alignment_points(mesh_468xD: np.ndarray) -> np.ndarray:
    """``eye_left``, ``eye_right``, ``mouth_left``, ``mouth_right`` ``[4, 2]`` from FaceMesh landmarks.

    Eye centres are the means of FaceMesh points 33, 160, 158, 133, 153, 144 and 362, 385, 387, 263, 373,
    380 (dlib's 36-41 and 42-47); mouth corners are points 61 and 291 (dlib's 48 and 54). ``eye_left`` is the
    subject's right eye, on the image's left in a frontal photograph, as in NVIDIA's script.
    """
    mesh = np.asarray(mesh_468xD, np.float64)[:, :2]
    return np.stack([mesh[list(EYE_LEFT)].mean(0), mesh[list(EYE_RIGHT)].mean(0), mesh[MOUTH_LEFT],
                     mesh[MOUTH_RIGHT]])


def as_rgb(image: Any, index: int = 0) -> np.ndarray:
    """A uint8 image as ``[H, W, 3]``: grey (``[H, W]``, ``[H, W, 1]``) replicated, alpha (``[H, W, 4]``)
    dropped. ``index`` names the image in the error message."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise DetectionError(f"image {index}: expected uint8 [H, W] or [H, W, 1|3|4], got {image.dtype} "
                             f"{list(image.shape)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise DetectionError(f"image {index}: empty ({image.shape[0]}x{image.shape[1]} pixels)")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


# ---------------------------------------------------------------------------------------------------------
# Geometry on the host. Internally points are continuous coordinates (pixel i spans [i, i + 1]); the public
# convention (pixel centres at integers) is 0.5 less.


def _detector_input(image_HxWx3: np.ndarray, squash: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 256x256 BlazeFace input (float32 pixels, 0..255) and its map to the photograph (continuous
    coordinates): ``photo = input * scale + offset``.

    Output pixel ``i`` reads the letterboxed (or squashed) photograph at pixel index ``i * s``, bilinear,
    black outside the photograph: TensorFlow's ``resize_bilinear`` without half-pixel centres, which is how
    Human (and MediaPipe's own pipeline, with no antialiasing either) feed BlazeFace. An antialiased resize
    changes BlazeFace's boxes by up to 2%, which moves FaceMesh's landmarks by more than a pixel.
    """
    h, w, _ = image_HxWx3.shape
    n = blazeface.INPUT_SIZE
    if squash:
        scale, pad = np.array([w / n, h / n]), np.zeros(2)
    else:
        side = max(h, w)
        scale, pad = np.full(2, side / n), np.array([(side - w) // 2, (side - h) // 2], np.float64)
    offset = 0.5 - 0.5 * scale - pad  # pixel index i * s - pad, in continuous coordinates
    # Pillow's affine map takes output continuous coordinates to input continuous coordinates.
    coeffs = (scale[0], 0.0, offset[0], 0.0, scale[1], offset[1])
    pixels = Image.fromarray(image_HxWx3).transform((n, n), Image.AFFINE, coeffs, resample=Image.BILINEAR)
    return np.asarray(pixels, np.float32), scale, offset


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _crop_pixels(image_HxWx3: np.ndarray, crop: Crop) -> np.ndarray:
    """The ``[192, 192, 3]`` uint8 crop: crop coordinate ``u`` in ``[0, 192]^2`` (continuous) samples the
    photograph at ``centre + R(angle) (u / 192 - 1/2) side``, bilinear, black outside.

    No antialiasing, as in MediaPipe's and Human's pipelines, whose crops FaceMesh was made for: the landmarks
    of the 26 CelebA-HQ faces at 1024 px agree with those at 512 and 256 px to 0.34 and 0.38 crop pixels RMS
    this way, and to 0.32 and 0.37 with an antialiasing box-filter shrink first (one crop pixel is
    ``side / 192`` photograph pixels), while the shrink moves them further from Human's.
    """
    size = facemesh.INPUT_SIZE
    rot = _rotation(crop.angle) * (crop.side / size)  # crop pixels -> photograph pixels
    centre = np.asarray(crop.centre) + 0.5  # continuous coordinates
    # Only the region the crop covers (plus a margin) is handed to Pillow.
    corners = centre + (np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * size / 2) @ rot.T
    h, w, _ = image_HxWx3.shape
    x0, y0 = (int(max(v, 0)) for v in np.floor(corners.min(0)) - 2)
    x1, y1 = int(min(np.ceil(corners[:, 0].max()) + 2, w)), int(min(np.ceil(corners[:, 1].max()) + 2, h))
    if x1 <= x0 or y1 <= y0:  # entirely outside the photograph
        return np.zeros((size, size, 3), np.uint8)
    # Pillow's affine map takes output continuous coordinates to input continuous coordinates.
    origin = centre - np.array([x0, y0]) - rot @ np.full(2, size / 2)
    coeffs = (rot[0, 0], rot[0, 1], origin[0], rot[1, 0], rot[1, 1], origin[1])
    region = Image.fromarray(image_HxWx3[y0:y1, x0:x1])
    return np.asarray(region.transform((size, size), Image.AFFINE, coeffs, resample=Image.BILINEAR))


# ---------------------------------------------------------------------------------------------------------
# The two jitted steps.


def _nms(boxes_Ax4: jax.Array, scores_A: jax.Array, *, max_faces: int, score_threshold: float,
         iou_threshold: float) -> tuple[jax.Array, jax.Array]:
    """Greedy non-maximum suppression of one photograph's anchors: ``(indices [K], valid [K])``."""
    area = jnp.prod(boxes_Ax4[:, 2:] - boxes_Ax4[:, :2], axis=-1)

    def pick(live_A: jax.Array, _) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        i = jnp.argmax(live_A)
        valid = live_A[i] > score_threshold
        chosen_1x4 = boxes_Ax4[i][None]
        lo = jnp.maximum(boxes_Ax4[:, :2], chosen_1x4[:, :2])
        hi = jnp.minimum(boxes_Ax4[:, 2:], chosen_1x4[:, 2:])
        inter = jnp.prod(jnp.clip(hi - lo, 0.0), axis=-1)
        union = area + area[i] - inter
        iou = jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)
        suppressed = (iou > iou_threshold) | (jnp.arange(live_A.shape[0]) == i)
        return jnp.where(suppressed, -jnp.inf, live_A), (i, valid)

    _, (indices, valid) = jax.lax.scan(pick, scores_A, None, length=max_faces)
    return indices, valid


@functools.partial(jax.jit, static_argnames=("max_faces", "score_threshold", "iou_threshold", "dtype"))
def _detect_step(variables: Any, pixels_Bx256x256x3: jax.Array, *, max_faces: int, score_threshold: float,
                 iou_threshold: float, dtype: str) -> dict[str, jax.Array]:
    """BlazeFace on float pixels (0..255), anchor decoding and NMS.

    Returns the kept faces (``[B, K, ...]``: ``boxes`` x0, y0, x1, y1 and ``keypoints`` in 256-px input units,
    continuous; ``scores``; ``valid``) and the network's raw ``logits`` and ``regressors``.
    """
    out = blazeface.apply(variables, blazeface.normalize(pixels_Bx256x256x3), dtype=jnp.dtype(dtype))
    anchors_1xAx2 = jnp.asarray(blazeface.anchors())[None]
    reg = out["regressors"]
    centre = reg[..., 0:2] + anchors_1xAx2
    half = reg[..., 2:4] / 2
    boxes = jnp.concatenate([centre - half, centre + half], axis=-1)  # [B, A, 4] x0, y0, x1, y1
    keypoints = reg[..., 4:].reshape(*reg.shape[:2], blazeface.NUM_KEYPOINTS, 2) + anchors_1xAx2[:, :, None, :]
    probs = jax.nn.sigmoid(out["scores"])
    nms = functools.partial(_nms, max_faces=max_faces, score_threshold=score_threshold, iou_threshold=iou_threshold)
    idx_BxK, valid_BxK = jax.vmap(nms)(boxes, probs)
    take = jax.vmap(lambda a, i: a[i])
    return {"boxes": take(boxes, idx_BxK), "keypoints": take(keypoints, idx_BxK), "scores": take(probs, idx_BxK),
            "valid": valid_BxK, "logits": out["scores"], "regressors": reg}


@functools.partial(jax.jit, static_argnames=("dtype",))
def _mesh_step(variables: Any, crops_Nx192x192x3: jax.Array, *, dtype: str) -> dict[str, jax.Array]:
    """FaceMesh on uint8 crops: ``mesh`` [N, 468, 3] in crop pixels (continuous), ``face_flag`` [N] and
    ``contours``."""
    return facemesh.apply(variables, crops_Nx192x192x3.astype(jnp.float32) / 255.0, dtype=jnp.dtype(dtype))


def _bucket(n: int, cap: int | None = None) -> int:
    """``n`` rounded up to a power of two (at most ``cap``), so that few batch shapes are ever compiled."""
    size = 1 << max(0, n - 1).bit_length()
    return min(size, cap) if cap else size


def _pad_batch(x_NxHxWxC: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([x_NxHxWxC, np.zeros((n - len(x_NxHxWxC), *x_NxHxWxC.shape[1:]), x_NxHxWxC.dtype)])


# ---------------------------------------------------------------------------------------------------------
# The detector.


@dataclasses.dataclass(frozen=True, eq=False)
class FaceDetector:
    """BlazeFace + FaceMesh with their converted variables (see the module docstring).

    Attributes:
      blazeface_variables: Flax variables of :class:`magec_jax.models.blazeface.BlazeFace`.
      facemesh_variables: Flax variables of :class:`magec_jax.models.facemesh.FaceMesh`.
      config: the settings.
    """

    blazeface_variables: Any
    facemesh_variables: Any
    config: DetectorConfig = DetectorConfig()

    @classmethod
    def load(cls, weights_dir: str | Path | None = None, config: DetectorConfig = DetectorConfig()) -> FaceDetector:
        """Loads ``weights_dir/blazeface`` and ``weights_dir/facemesh`` (converted-weights directories; by
        default the ones shipped in the package)."""
        root = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
        blaze = load_converted(root / "blazeface", kind="blazeface")
        mesh = load_converted(root / "facemesh", kind="facemesh")
        return cls(jax.device_put(blaze.variables), jax.device_put(mesh.variables), config)

    def detect(self, images: Sequence[Any]) -> list[list[Face]]:
        """The faces of each photograph, most confident first (an empty list where there is none).

        Args:
          images: uint8 photographs ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` (alpha ignored),
            any sizes.

        Raises:
          DetectionError: an image of another type or shape (the message gives its index).
        """
        photos = [as_rgb(image, i) for i, image in enumerate(images)]
        faces: list[list[Face]] = []
        for start in range(0, len(photos), self.config.batch_size):
            faces.extend(self._detect_batch(photos[start : start + self.config.batch_size]))
        return faces

    def _detect_batch(self, photos: list[np.ndarray]) -> list[list[Face]]:
        """One BlazeFace call for the batch, then one FaceMesh call for all its crops."""
        cfg = self.config
        prepared = [_detector_input(p, cfg.squash) for p in photos]
        inputs = np.stack([x for x, _, _ in prepared])
        out = _detect_step(self.blazeface_variables, _pad_batch(inputs, _bucket(len(inputs), cfg.batch_size)),
                           max_faces=cfg.max_faces, score_threshold=cfg.score_threshold,
                           iou_threshold=cfg.iou_threshold, dtype=cfg.dtype)
        out = {k: np.asarray(out[k], np.float64) for k in ("boxes", "keypoints", "scores", "valid")}
        found = []  # (photo, box, score, keypoints, crop), in photograph pixels
        for p, (_, scale, offset) in enumerate(prepared):
            for k in np.flatnonzero(out["valid"][p]):
                lo = out["boxes"][p, k, :2] * scale + offset - 0.5
                hi = out["boxes"][p, k, 2:] * scale + offset - 0.5
                keypoints = out["keypoints"][p, k] * scale + offset - 0.5
                crop = Crop(centre=_point((lo + hi) / 2), side=cfg.box_scale * float(np.max(hi - lo)),
                            angle=_upright_angle(keypoints, cfg))
                found.append((p, tuple(np.concatenate([lo, hi]).tolist()), float(out["scores"][p, k]), keypoints, crop))
        faces: list[list[Face]] = [[] for _ in photos]
        if not found:
            return faces
        owners = [p for p, *_ in found]
        crops = [crop for *_, crop in found]
        meshes, flags = self._mesh_pass(photos, owners, crops)
        keep = np.flatnonzero(flags >= cfg.mesh_threshold)
        if cfg.refine and len(keep):
            refined = [_refined_crop(meshes[i], cfg) for i in keep]
            meshes_r, flags_r = self._mesh_pass(photos, [owners[i] for i in keep], refined)
            for j, i in enumerate(keep):
                crops[i], meshes[i], flags[i] = refined[j], meshes_r[j], flags_r[j]
            keep = keep[flags_r >= cfg.mesh_threshold]
        for i in keep:
            p, box, score, keypoints, _ = found[i]
            faces[p].append(Face(box=box, score=score, mesh_score=float(flags[i]), mesh_468x3=_readonly(meshes[i]),
                                 keypoints_6x2=_readonly(keypoints), crop=crops[i]))
        return faces

    def _mesh_pass(self, photos: list[np.ndarray], owners: list[int],
                   crops: list[Crop]) -> tuple[np.ndarray, np.ndarray]:
        """One FaceMesh call on ``crops`` (of ``photos[owners]``): landmarks ``[N, 468, 3]`` in photograph pixels
        and face flags ``[N]``."""
        pixels = np.stack([_crop_pixels(photos[p], crop) for p, crop in zip(owners, crops)])
        out = _mesh_step(self.facemesh_variables, _pad_batch(pixels, _bucket(len(pixels))), dtype=self.config.dtype)
        meshes = np.asarray(out["mesh"], np.float64)[: len(crops)]
        flags = np.asarray(out["face_flag"], np.float64)[: len(crops)]
        return np.stack([_mesh_to_photo(m, crop) for m, crop in zip(meshes, crops)]), flags


def _upright_angle(keypoints_6x2: np.ndarray, cfg: DetectorConfig) -> float:
    """The crop angle that makes the face upright (see :class:`Crop`), from BlazeFace's keypoints."""
    if cfg.rotation_line == "eyes":
        right_to_left = keypoints_6x2[blazeface.LEFT_EYE] - keypoints_6x2[blazeface.RIGHT_EYE]
        return _applied(math.atan2(right_to_left[1], right_to_left[0]), cfg)
    up = keypoints_6x2[blazeface.NOSE] - keypoints_6x2[blazeface.MOUTH]
    return _applied(math.atan2(up[0], -up[1]), cfg)


def _applied(angle: float, cfg: DetectorConfig) -> float:
    """``angle``, or 0 when crops are not rotated or the angle is within ``min_rotation``."""
    return angle if cfg.rotate and abs(angle) > cfg.min_rotation else 0.0


def _refined_crop(mesh_468x3: np.ndarray, cfg: DetectorConfig) -> Crop:
    """The crop made from a face's landmarks (photograph pixels), from the four alignment points only (the
    mesh's outline, the forehead above all, moves with the crop and would not settle): upright on the eye
    centres' line, centred halfway between the eyes' and the mouth corners' midpoints, ``box_scale`` times
    :data:`FACE_SIZE_FROM_POINTS` ``max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)`` wide (FFHQ's measure of a face)."""
    eye_left, eye_right, mouth_left, mouth_right = alignment_points(mesh_468x3)
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye, eye_to_mouth = eye_right - eye_left, (mouth_left + mouth_right) / 2 - eye_avg
    size = FACE_SIZE_FROM_POINTS * max(2 * np.hypot(*eye_to_eye), 1.8 * np.hypot(*eye_to_mouth))
    angle = _applied(math.atan2(eye_to_eye[1], eye_to_eye[0]), cfg)
    return Crop(centre=_point(eye_avg + eye_to_mouth / 2), side=cfg.box_scale * float(size), angle=angle)


def _mesh_to_photo(mesh_468x3: np.ndarray, crop: Crop) -> np.ndarray:
    """FaceMesh output (crop pixels, continuous) -> photograph pixels (centres at integers); z scaled alike."""
    scale = crop.side / facemesh.INPUT_SIZE
    offsets = (mesh_468x3[:, :2] - facemesh.INPUT_SIZE / 2) * scale
    xy = np.asarray(crop.centre) + offsets @ _rotation(crop.angle).T
    return np.concatenate([xy, mesh_468x3[:, 2:] * scale], axis=1)


def _point(xy: np.ndarray) -> tuple[float, float]:
    return float(xy[0]), float(xy[1])


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, np.float64)
    a.flags.writeable = False
    return a

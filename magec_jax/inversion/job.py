"""The batch inversion job behind ``python -m magec_jax.invert``.

For a folder (or list file) of images and a model bundle it writes, per image ``<name>``:

  * ``<name>.npz``  key ``w``: float32 ``[1, num_ws, w_dim]`` (NVIDIA ``generate.py --projected-w`` reads
    it); with a noise stage also ``noise_<i>``: float32 ``[h, w]`` per noise layer;
  * ``<name>.png``  the reconstruction G(w) at the generator's resolution;
  * ``<name>.json`` final loss terms, steps, seconds, status, the ``fingerprint`` of what decided the result
    and the input file's ``input_sha256``; written LAST, so its presence marks the image as done;

and ``summary.json`` for the job (rewritten after every batch). Every file is written atomically, with the
process's usual file mode. The job receives its networks (a loaded bundle, built networks or an engine) and
never loads a bundle itself; ``python -m magec_jax.invert`` (:func:`magec_jax.invert.run`) loads the config's
bundle, runs the job, then the edit stage of an ``edit_grid`` block (``magec_jax.editing.render``).

A run, in order:

  1. lists the inputs; the output folder is never listed, even when it lies inside the input folder. A missing,
     empty or mistyped input is a one-line error, and nothing is created;
  2. sorts every listed image: *done* (a result with this run's fingerprint from the same input file),
     *stale* (a result with another fingerprint or from another file: the job stops with one line naming the
     differences, unless ``on_mismatch`` is ``recompute``), *remembered* (skipped or failed before, its file
     unchanged: not tried again), or *to do*. Inputs that map to an output name already taken (``a.png``
     beside ``a.jpg``) are skipped, the first in sorted order keeping the name;
  3. reads every image to do by the input policy (``magec_jax.images``); unreadable or unsuitable ones (a
     decompression bomb or any image over ``max_image_pixels``, refused from its header; truncated, several
     frames, transparent, too small) are reported in one line, skipped and remembered;
  4. inverts the valid ones in the fewest batches of at most ``batch_size``, all of one size chosen to pad as
     few rows as possible (:func:`batch_plan`). The networks are loaded and the step compiled only when there is
     something to invert, so a rerun of a finished job does neither. An image whose loss becomes non-finite is
     reported as failed (and remembered) while the rest of its batch finishes.

A job killed at any moment and restarted with the same output folder redoes only the images without a result
(and deletes the killed run's half-written temporaries; one job per output folder).

Photographs (``config.align``): before step 2, every face of every listed photograph is found and aligned to
the bundle's framing (``Bundle.framing``: FFHQ or its template) at the generator's resolution by
``magec_jax.faces.pipeline.align_photos``, into ``aligned/`` (crops, their records, ``aligned/summary.json``;
resumable). Each face ``<name>__face<j>`` (``j`` from the left) is then an item of its own whose input is its
aligned crop, and its ``<name>__face<j>.json`` also records ``photo``, ``face``, ``score`` and ``alignment``
(``Alignment.to_json``). A photograph with no face or that cannot be read, and a face too small to invert
(with its size), are reported in ``skipped`` and remembered by the alignment stage. After the inversion,
``pasted/<name>.png`` is the photograph at its own size with every inverted face's reconstruction pasted back;
the edit stage adds ``pasted/<name>__<label>.png`` (``magec_jax.editing.render.paste_edit_grid``). Pasted
photographs are rewritten when older than their sources.

Inputs that are not aligned faces are framed as the bundle's generator data was (:func:`image_framing`;
``config.framing`` overrides it): the centred square, or the whole image letterboxed on black (a cars bundle).
Letterboxed inputs keep their content box, and with ``mask_bands`` (the default) the engine's losses see only
it (``engine.Targets``: outside it G(w) is replaced by the target, so the bands add nothing and send no
gradient). A non-face bundle never aligns: ``align`` on one is refused in one line.

The fingerprint (:func:`fingerprint`): the inversion settings actually run (after ``steps_scale``; the
progress interval ``chunk_steps`` left out; of the compute options only the resolved precision),
``matmul_precision``, the bundle (:func:`bundle_identity`) and the preprocessing (resolution, minimum size,
crop, resize, for a letterbox the loss area; with ``align``, the framing and the detector's settings). The pixel limit ``max_image_pixels``
is not in it: it decides only whether a file is read, never what is computed from one that is, so changing it
leaves finished results done. A skipped image is remembered for the preprocessing and the reading settings
(``magec_jax.images.reading_settings``: the reading policy's version and the pixel limit), so it is read again
when the limit changes.

``summary.json``: ``config``, ``fingerprint``, ``steps``, ``images`` (listed), ``done`` (listed images with a
result), ``skipped`` and ``failed`` (the images skipped or failed as the folder stands, with the reason and
the file's sha256, so that they are retried only when the file or the settings change), and ``runs``: one
record per run (``started``, ``seconds``, ``images``, ``valid``, ``already_done``, ``done`` (inverted by the
run), ``recomputed``, ``failed``, ``skipped``, ``skipped_earlier``, ``steps``, ``batch_size``, ``devices``,
``processes``, ``seconds_per_image``), appended, so a rerun keeps the earlier runs' figures.
:func:`run` returns its run's record.

Multi-process (``jax.distributed``): every process lists and reads the same images, takes every P-th valid
one, and runs the same number of batches (padding its own), so the global batch stays in lockstep; each
process writes only its own images, and process 0 merges the records.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import functools
import hashlib
import json
import math
import time
import weakref
from pathlib import Path
from typing import Any, Literal, Protocol, Sequence

import jax
import ml_collections
import numpy as np

from magec_jax import images as imio
from magec_jax.configdicts import from_configdict
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.faces import pipeline as faces
from magec_jax.inversion.engine import (
    ComputeOptions,
    Engine,
    InversionSettings,
    Networks,
    NoisePhase,
    Phase,
    local_rows,
)
from magec_jax.inversion.magec_loss import EditMode
from magec_jax.inversion.protocols import scale_steps
from magec_jax.inversion.pti import PTIConfig
from magec_jax.logs import Log, to_stderr
from magec_jax.weights import sha256_file

_WORKERS = 4  # threads hashing and reading input files
ALIGNED = "aligned"  # the aligned faces' folder in the output folder (config.align)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """``jax.distributed`` settings; ``num_processes == 1`` means a single process."""

    coordinator_address: str = ""
    num_processes: int = 1
    process_id: int = 0
    cpu_collectives: str = "gloo"


@dataclasses.dataclass(frozen=True)
class EditGrid:
    """Edits rendered after the inversion (by ``magec_jax.invert.run``): one row per attribute, one column per
    strength; no attributes: no edit stage."""

    attributes: tuple[str, ...] = ()
    strengths: tuple[float, ...] = ()


_PAPER = InversionSettings()  # the defaults of the inversion block: METHOD.md's


@dataclasses.dataclass(frozen=True)
class InversionConfig:
    """``config.inversion`` as a config writes it (``magec_jax.inversion.protocols.inversion_config``): the
    engine's settings with each phase a dict of steps and weights by term name, and the noise stage as
    ``noise_steps`` (0: none) and ``noise_lr``. :attr:`settings` are the engine's typed settings."""

    protocol: str = ""  # the protocol the values came from (a label: the values decide)
    phases: tuple[Phase, ...] = _PAPER.phases
    lr: float = _PAPER.lr
    lr_decay: float = _PAPER.lr_decay
    lr_decay_every: int = _PAPER.lr_decay_every
    adam_b1: float = _PAPER.adam_b1
    adam_b2: float = _PAPER.adam_b2
    adam_eps: float = _PAPER.adam_eps
    latent_space: Literal["w+", "w"] = "w+"
    magec_alpha: float = _PAPER.magec_alpha
    magec_mode: EditMode = _PAPER.magec_mode
    chunk_steps: int = _PAPER.chunk_steps
    noise_steps: int = 0
    noise_lr: float = NoisePhase(1).lr
    compute: ComputeOptions = _PAPER.compute

    def __post_init__(self):
        if not self.phases:
            raise ValueError("phases must be at least one phase, got ()")
        if self.noise_steps < 0:
            raise ValueError(f"noise_steps must be a non-negative integer, got {self.noise_steps}")
        for name in ("lr_decay_every", "chunk_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")

    @property
    def settings(self) -> InversionSettings:
        """The engine's settings at the block's own step counts."""
        return InversionSettings(
            phases=self.phases, lr=self.lr, lr_decay=self.lr_decay, lr_decay_every=self.lr_decay_every,
            adam_b1=self.adam_b1, adam_b2=self.adam_b2, adam_eps=self.adam_eps, latent_space=self.latent_space,
            magec_alpha=self.magec_alpha, magec_mode=self.magec_mode,
            noise_phase=NoisePhase(steps=self.noise_steps, lr=self.noise_lr) if self.noise_steps else None,
            chunk_steps=self.chunk_steps, compute=self.compute,
        )


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """The typed form of an inversion config (``configs/``, ``magec_jax.inversion.protocols.job_config``), field
    for field; read it with ``magec_jax.configdicts.from_configdict(JobConfig, config)``.

    :attr:`settings` are the settings actually run: the inversion block with ``steps_scale`` applied.
    """

    bundle: str
    images: str
    out_dir: str
    batch_size: int
    inversion: InversionConfig
    name: str = ""
    steps_scale: float = 1.0
    on_mismatch: Literal["refuse", "recompute"] = "refuse"
    min_size: int | None = None  # None: half the resolution
    max_image_pixels: int = imio.MAX_IMAGE_PIXELS  # larger inputs are refused unread; not in the fingerprint
    align: bool = False
    framing: Literal["", "square", "letterbox"] = ""  # "": the bundle's (image_framing), square without one
    mask_bands: bool = True  # letterbox framing: the losses see only each image's content area
    matmul_precision: str = "highest"
    edit_grid: EditGrid = EditGrid()
    pti: PTIConfig = PTIConfig()
    distributed: DistributedConfig = DistributedConfig()

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size}")
        if not (math.isfinite(self.steps_scale) and self.steps_scale > 0):
            raise ValueError(f"steps_scale must be a positive number, got {self.steps_scale}")
        if self.min_size is not None and self.min_size < 1:
            raise ValueError(f"min_size must be a positive integer (or None: half the resolution), got {self.min_size}")
        if self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be a positive integer, got {self.max_image_pixels}")

    @functools.cached_property
    def settings(self) -> InversionSettings:
        """The inversion settings run: ``inversion`` with every step count scaled by ``steps_scale``."""
        return scale_steps(self.inversion.settings, self.steps_scale)


def init_distributed(dist: DistributedConfig) -> None:
    """Starts ``jax.distributed`` when the job spans several processes; call it before anything touches a
    device (it is a no-op when already initialised). The CPU collectives setting only affects CPU devices."""
    if dist.num_processes <= 1 or jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", dist.cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=dist.coordinator_address or None,
        num_processes=dist.num_processes,
        process_id=dist.process_id,
    )


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def is_done(out_dir: Path, name: str) -> bool:
    """An image has a result when its JSON (written last) and its latent exist (whatever its fingerprint)."""
    return (out_dir / f"{name}.json").is_file() and (out_dir / f"{name}.npz").is_file()


# ---- what decides a result ---------------------------------------------------------------------------------


def bundle_identity(path: str | Path) -> str:
    """A hex sha256 identifying a bundle's contents without reading its weights: every JSON file in full (the
    bundle manifest; each network's manifest, which records its source file's sha256 or its training step;
    the fit reports) and the relative path and size of every other file. The sample cache ``supervision/`` and
    hidden temporaries are left out. Empty when ``path`` is not a folder (networks given by the caller)."""
    root = Path(path)
    if not str(path) or not root.is_dir():
        return ""
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root)
        if rel.parts[0] == "supervision" or any(part.startswith(".") for part in rel.parts):
            continue
        digest.update(rel.as_posix().encode() + b"\0")
        digest.update(file.read_bytes() if file.suffix == ".json" else str(file.stat().st_size).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def image_framing(job: JobConfig, bundle: NetworkSource | None = None) -> str:
    """How the job frames an input that is not aligned (``magec_jax.images.frame``): the config's ``framing``,
    else the bundle's (``Bundle.image_framing``: its generator's data), else ``"square"``."""
    if job.framing:
        return job.framing
    return bundle.image_framing() if bundle is not None else "square"


def preprocessing(job: JobConfig, resolution: int, align: dict[str, Any] | None = None,
                  framing: str = "square") -> dict[str, Any]:
    """How an input file becomes the target image (the input policy of ``magec_jax.images``, ``framing`` as
    :func:`image_framing` resolves it); with ``align`` (``faces.pipeline.alignment_settings``), how a
    photograph's faces become aligned crops."""
    min_size = resolution // 2 if job.min_size is None else job.min_size
    if align is not None:
        return dict(resolution=resolution, min_size=min_size, crop="aligned face", align=align)
    if framing == "letterbox":
        return dict(resolution=resolution, min_size=min_size, crop="letterbox", resize="lanczos",
                    loss_area="content" if job.mask_bands else "whole frame")
    return dict(resolution=resolution, min_size=min_size, crop="centred square", resize="lanczos")


def content_masks(job: JobConfig, framing: str, boxes: Sequence[tuple[int, int, int, int]],
                  resolution: int) -> np.ndarray | None:
    """The engine's content masks ``[B, H, W]`` for letterboxed inputs with ``mask_bands`` (None otherwise:
    every pixel counts)."""
    if framing != "letterbox" or not job.mask_bands:
        return None
    return np.stack([imio.content_mask(box, resolution) for box in boxes])


def fingerprint(job: JobConfig, resolution: int, bundle_id: str, align: dict[str, Any] | None = None,
                framing: str = "square") -> dict[str, Any]:
    """Everything but the input file that decides a result, as JSON-ready data (see the module docstring)."""
    settings = dataclasses.asdict(job.settings)
    del settings["chunk_steps"]  # how often progress is read, not what is computed
    # Of how the step is computed, only the precision (as resolved on this platform) changes the result beyond
    # float rounding; modulation, loop, donation and remat do not.
    settings["compute"] = dict(precision=job.settings.compute.resolved().precision)
    record = dict(settings=settings, matmul_precision=job.matmul_precision, bundle=bundle_id,
                  preprocessing=preprocessing(job, resolution, align, framing))
    return json.loads(json.dumps(record))


def _short_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def differences(old: Any, new: Any, path: str = "") -> list[str]:
    """The fields in which two JSON-like values differ, each as ``"a.b[1].c: OLD -> NEW"``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            field = f"{path}.{key}" if path else key
            if key not in new or key not in old:
                out.append(f"{field}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}")
            else:
                out += differences(old[key], new[key], field)
        return out
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{path}: {len(old)} entries -> {len(new)}"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def _result_differences(record: dict, fp: dict, digest: str | None) -> list[str]:
    if "fingerprint" not in record:
        return ["fingerprint: none recorded (a result of an older magec_jax)"]
    out = differences(record["fingerprint"], fp)
    if record.get("input_sha256") != digest:
        out.append("input file: its contents changed")
    return out


# ---- the job -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Input:
    path: Path
    name: str
    sha256: str | None  # None: the file cannot be read
    record: dict[str, Any] = dataclasses.field(default_factory=dict)  # more entries of its result's JSON


class _Progress:
    """One line per chunk of steps: batch, step, phase, running loss, valid images done, ETA."""

    def __init__(self, total_images: int, num_batches: int, settings: InversionSettings, log: Log):
        self.total, self.num_batches, self.log = total_images, num_batches, log
        self.done, self.t0 = 0, time.perf_counter()
        self.batch = 0
        self.batch_images = 0
        ends = np.cumsum([p.steps for p in settings.phases])
        self.phase_ends = list(ends) + ([ends[-1] + settings.noise_phase.steps] if settings.noise_phase else [])
        self.noise = settings.noise_phase is not None

    def phase(self, steps_done: int) -> str:
        """``phase k/n`` of the last step taken (the noise stage is the last phase)."""
        k = next(i for i, end in enumerate(self.phase_ends) if steps_done <= end)
        noise = " (noise)" if self.noise and k == len(self.phase_ends) - 1 else ""
        return f"phase {k + 1}/{len(self.phase_ends)}{noise}"

    def chunk(self, steps_done: int, total_steps: int, state) -> None:
        loss = np.asarray(local_rows(state.losses))[: max(self.batch_images, 1), 0]
        elapsed = time.perf_counter() - self.t0
        frac = (self.batch + steps_done / total_steps) / max(self.num_batches, 1)
        eta = elapsed / frac * (1 - frac) if frac > 0 else float("nan")
        finite = loss[np.isfinite(loss)]
        shown = f"{finite.mean():.4f}" if finite.size else "nan"
        self.log(
            f"[{jax.process_index()}] batch {self.batch + 1}/{self.num_batches} step {steps_done}/{total_steps} "
            f"{self.phase(steps_done)} loss {shown} | {self.done}/{self.total} images done | "
            f"{elapsed:.0f} s, ETA {fmt_duration(eta)}"
        )


def fmt_duration(seconds: float) -> str:
    """``1m05s``, ``42s`` or ``?``."""
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


# Batch sizes each engine has inverted: the first batch of a size compiles the step (for the "compiling" line).
_COMPILED: weakref.WeakKeyDictionary[Engine, set[int]] = weakref.WeakKeyDictionary()



class NetworkSource(Protocol):
    """Where a job's networks come from when they are built only if there is something to invert: a loaded
    model bundle (``magec_jax.bundle.Bundle``) is one."""

    def resolution(self) -> int:
        """The generator's image resolution, without loading weights."""

    def framing(self) -> faces.Framing:
        """How photographs are aligned for the generator (``config.align``; refused for a non-face bundle)."""

    def image_framing(self) -> str:
        """How the generator's data framed an image: ``"square"`` or ``"letterbox"`` (``magec_jax.images``)."""

    def networks(self) -> Networks:
        """The engine's networks (loads the weights)."""


def run(
    config: JobConfig | ml_collections.ConfigDict,
    *,
    bundle: NetworkSource | None = None,
    networks: Networks | None = None,
    engine: Engine | None = None,
    log: Log = to_stderr,
) -> dict[str, Any]:
    """Runs the inversion job described by ``config``; returns this run's record (see the module docstring).

    Give exactly one source of networks: ``bundle``, ``networks`` or ``engine``.

    Args:
      config: an inversion config (``configs/*.py``), or its typed form.
      bundle: the config's model bundle, loaded (``magec_jax.bundle.load_bundle(config.bundle)``); its
        networks are built only when there is something to invert, and photographs are aligned to its framing.
      networks: already-built networks (photographs are then aligned to the FFHQ framing).
      engine: an engine built for the networks and the config's settings, to reuse its compiled steps
        across jobs (the evaluation inverts originals and edited images with one engine per method).
      log: where one-line reports go.

    Raises:
      MagecError: a missing, empty or unreadable input or bundle, or stale results with ``on_mismatch``
        ``refuse``; nothing is written then.
    """
    if sum(source is not None for source in (bundle, networks, engine)) != 1:
        raise ValueError("run needs exactly one of bundle (magec_jax.bundle.load_bundle(config.bundle)), networks "
                         "or engine")
    job = config if isinstance(config, JobConfig) else from_configdict(JobConfig, config)
    init_distributed(job.distributed)
    jax.config.update("jax_default_matmul_precision", job.matmul_precision)
    if engine is not None and engine.settings != job.settings:
        raise ValueError("the engine given was built for other inversion settings than the config's")
    out_dir = Path(job.out_dir)
    pid, nproc = jax.process_index(), jax.process_count()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t_job = time.perf_counter()

    if engine is not None:
        resolution = engine.nets.resolution
    elif networks is not None:
        resolution = networks.resolution
    else:
        resolution = bundle.resolution()
    aligned, align_settings = None, None
    framing = image_framing(job, bundle)
    if job.align:  # a bundle that does not align (not of faces) refuses before anything is read
        face_framing = bundle.framing() if bundle is not None else faces.Framing.ffhq(resolution)
    inputs, duplicates = _list_inputs(job, out_dir)
    if job.align:
        align_settings = faces.alignment_settings(face_framing)
        fp = fingerprint(job, resolution, bundle_identity(job.bundle), align_settings)
        if job.on_mismatch == "refuse":  # before the alignment stage rewrites aligned/ for new settings
            _refuse_other_face_results(inputs, out_dir, fp)
        aligned = _align(inputs, out_dir, face_framing, job.max_image_pixels, log)
        inputs = [_Input(f.crop, f.name, _digest(f.crop), _face_entries(f)) for f in aligned.faces]
        framing = "square"  # aligned crops are the generator's square
    fp = fingerprint(job, resolution, bundle_identity(job.bundle), align_settings, framing)
    folder = _sort(inputs, duplicates, out_dir, fp, job.max_image_pixels)
    if folder.stale and job.on_mismatch == "refuse":
        raise MagecError(_stale_message(out_dir, folder.stale))

    # Read every image to do before batching: only valid images fill batches.
    new_skips = [dict(image=str(p), reason=reason) for p, reason in duplicates]
    valid = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        problems = pool.map(lambda item: _problem(item.path, resolution, job.min_size, job.max_image_pixels,
                                                  framing), folder.todo)
        for item, problem in zip(folder.todo, problems):
            if problem is None:
                valid.append(item)
            else:
                new_skips.append(dict(image=str(item.path), reason=problem, sha256=item.sha256,
                                      holds_for=folder.preprocessing_hash))
    for s in new_skips:
        log(f"skipped {s['image']}: {s['reason']}")
    if aligned is not None:  # reported (and remembered) by the alignment stage
        new_skips += list(aligned.skipped)

    out_dir.mkdir(parents=True, exist_ok=True)
    if pid == 0:
        _remove_temporaries(out_dir)
    _barrier("magec-listed")  # nobody writes before everybody has listed
    mine = valid[pid::nproc]
    batch, num_batches = batch_plan(math.ceil(len(valid) / nproc), job.batch_size, jax.local_device_count())
    skipped = folder.skipped_before + new_skips
    steps = job.settings.total_steps + (job.settings.noise_phase.steps if job.settings.noise_phase else 0)
    n_skipped = f"{len(skipped)} skipped ({len(folder.skipped_before)} earlier), " if skipped else ""
    n_failed = f"{len(folder.failed_before)} failed earlier, " if folder.failed_before else ""
    n_stale = f" ({len(folder.stale)} recomputed: {folder.stale[0][1][0]})" if folder.stale else ""
    log(
        f"invert: {folder.listed} images, {folder.done} already done, {n_skipped}{n_failed}{len(valid)} to do"
        f"{n_stale}; process {pid}/{nproc} takes {len(mine)} in {num_batches} batches of {batch} "
        f"on {jax.device_count()} device(s)"
    )
    record: dict[str, Any] = dict(
        started=started, seconds=0.0, images=folder.listed, valid=folder.done + len(valid),
        already_done=folder.done, done=0, recomputed=len(folder.stale), failed=[], skipped=skipped,
        skipped_earlier=len(folder.skipped_before), steps=steps, batch_size=batch, devices=jax.device_count(),
        processes=nproc,
    )

    if num_batches:
        if engine is None:
            engine = Engine(networks if networks is not None else bundle.networks(), job.settings)
        _invert(job, engine, mine, batch, num_batches, record, folder, out_dir, framing, log)
    record["seconds"] = time.perf_counter() - t_job
    record["seconds_per_image"] = record["seconds"] / max(record["done"], 1)
    if nproc > 1:
        imio.atomic_write_json(out_dir / f"summary.process{pid}.json", record)
        _barrier("magec-finished")
        if pid == 0:
            parts = [read_json(out_dir / f"summary.process{p}.json") for p in range(nproc)]
            record = _merge_records(parts)
    if pid == 0:
        imio.atomic_write_json(out_dir / "summary.json", folder.summary(job, record))
    log(
        f"invert: {record['done']} inverted, {len(record['failed'])} failed, {len(record['skipped'])} skipped "
        f"in {record['seconds']:.1f} s -> {out_dir}"
    )
    if aligned is not None and pid == 0:
        faces.paste_reconstructions(aligned.faces, out_dir, max_pixels=job.max_image_pixels, log=log)
    return record


def _align(photos: Sequence[_Input], out_dir: Path, framing: faces.Framing, max_pixels: int,
           log: Log) -> faces.AlignReport:
    """The alignment stage (``config.align``): process 0 aligns the photographs into ``out_dir/aligned``; then
    every other process reads what it wrote."""
    inputs = [faces.PhotoInput(p.path, p.name, p.sha256) for p in photos]
    report = None
    if jax.process_index() == 0:
        report = faces.align_photos(inputs, out_dir / ALIGNED, framing, max_pixels=max_pixels, log=log)
    _barrier("magec-aligned")
    return report if report is not None else faces.align_photos(inputs, out_dir / ALIGNED, framing,
                                                                 max_pixels=max_pixels, log=log)


def _refuse_other_face_results(photos: Sequence[_Input], out_dir: Path, fp: dict[str, Any]) -> None:
    """Stops the job (one line) when the folder holds face results of these photographs computed with other
    settings than ``fp``'s; whether a photograph itself changed is checked later, on its aligned crops."""
    by_name = {p.name: p for p in photos}
    stale = []
    for result in out_dir.glob("*__face*.json"):
        photo_name, _, face = result.stem.rpartition("__face")
        if photo_name in by_name and face.isdigit() and result.with_suffix(".npz").is_file():
            record = read_json(result)
            diffs = _result_differences(record, fp, record.get("input_sha256"))  # the photograph: checked later
            if diffs:
                stale.append((by_name[photo_name], diffs))
    if stale:
        raise MagecError(_stale_message(out_dir, stale))


def _face_entries(face: faces.AlignedFace) -> dict[str, Any]:
    """What an aligned face's result records besides the job's entries: its photograph and alignment."""
    return dict(photo=str(face.photo), face=face.index, score=face.score, alignment=face.alignment.to_json())


def batch_plan(count: int, batch_size: int, devices: int = 1) -> tuple[int, int]:
    """``(batch, num_batches)`` for inverting ``count`` images per process with at most ``batch_size`` per
    batch (rounded up to a multiple of ``devices``): the fewest batches, and the smallest batch (a multiple of
    ``devices``) that fits them, so the last batch pads as few rows as possible. 17 images at ``batch_size``
    16 go in 2 batches of 9 (18 rows computed) rather than 16 + 16 (32). ``(batch, 0)`` when ``count`` is 0."""
    if batch_size < 1 or devices < 1 or count < 0:
        raise ValueError(f"batch_plan needs batch_size, devices >= 1 and count >= 0, got {batch_size}, {devices}, "
                         f"{count}")
    largest = -(-batch_size // devices) * devices
    num_batches = -(-count // largest)
    if not num_batches:
        return largest, 0
    return -(-count // (num_batches * devices)) * devices, num_batches


def _invert(job: JobConfig, engine: Engine, mine: Sequence[_Input], batch: int, num_batches: int,
            record: dict, folder: "_Folder", out_dir: Path, framing: str, log: Log) -> None:
    """Inverts this process's valid images (framed as ``framing``) in ``num_batches`` batches of ``batch``,
    writing each result and, after each batch, the summary."""
    resolution = engine.nets.resolution
    pid, nproc = jax.process_index(), jax.process_count()
    progress = _Progress(len(mine), num_batches, job.settings, log)
    if batch not in _COMPILED.setdefault(engine, set()):
        log(f"invert: compiling the inversion step for batches of {batch} at {resolution}x{resolution} "
            "(once per batch size; about a minute on a CPU)")

    def load(items: Sequence[_Input]):
        arrays, boxes, kept, skipped = [], [], [], []
        for item in items:
            try:
                pixels, box = imio.load_framed(item.path, resolution, min_size=job.min_size,
                                               max_pixels=job.max_image_pixels, framing=framing)
                arrays.append(pixels)
                boxes.append(box)
                kept.append(item)
            except FileFormatError as e:  # changed since it was checked
                skipped.append(dict(image=str(item.path), reason=e.problem))
        return arrays, boxes, kept, skipped

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(load, mine[0:batch])
        for b in range(num_batches):
            arrays, boxes, kept, skipped = future.result()
            if b + 1 < num_batches:
                future = pool.submit(load, mine[(b + 1) * batch: (b + 2) * batch])
            for s in skipped:
                log(f"skipped {s['image']}: {s['reason']}")
            record["skipped"] = record["skipped"] + skipped
            local = np.zeros((batch, resolution, resolution, 3), np.float32)
            if arrays:
                local[: len(arrays)] = np.stack(arrays)
                local[len(arrays):] = arrays[-1]  # padding rows: a real image, results discarded
            padded = boxes + boxes[-1:] * (batch - len(boxes)) if boxes else [(0, 0, resolution, resolution)] * batch
            masks = content_masks(job, framing, padded, resolution)
            progress.batch, progress.batch_images = b, len(kept)
            t0 = time.perf_counter()
            out = engine.invert(global_batch(engine.data_sharding, local), on_chunk=progress.chunk,
                                masks_BxHxW=None if masks is None else global_batch(engine.data_sharding, masks))
            _COMPILED[engine].add(batch)
            ws, recon = local_rows(out["ws"]), local_rows(out["images"])
            terms, failed = local_rows(out["terms"]), local_rows(out["failed"])
            noise = [local_rows(n) for n in out["noise"]]
            seconds = (time.perf_counter() - t0) / max(len(kept), 1)
            for i, item in enumerate(kept):
                losses = {t: float(v) for t, v in zip(engine.term_names, terms[i])}
                if failed[i] or not np.all(np.isfinite(ws[i])):
                    reason = "non-finite loss during optimisation"
                    record["failed"].append(dict(image=str(item.path), reason=reason, sha256=item.sha256,
                                                 holds_for=folder.fingerprint_hash))
                    log(f"failed {item.path}: {reason}")
                    continue
                _write_image(out_dir, item, ws[i], recon[i], [n[i] for n in noise], losses, record["steps"],
                             seconds, batch, folder.fingerprint)
                record["done"] += 1
            progress.done += len(kept)
            record["seconds"] = time.perf_counter() - progress.t0
            if nproc == 1:
                imio.atomic_write_json(out_dir / "summary.json", folder.summary(job, record))
            else:
                imio.atomic_write_json(out_dir / f"summary.process{pid}.json", record)


def _list_inputs(job: JobConfig, out_dir: Path) -> tuple[list[_Input], list[tuple[Path, str]]]:
    """The listed images with their output names and file hashes, and the inputs skipped because their output
    name is taken by an earlier one (``(path, reason)``)."""
    sources = imio.list_images(job.images, exclude=out_dir)
    if not sources:
        kind = "folder" if Path(job.images).is_dir() else "list file"
        raise FileFormatError(job.images, f"no images in this {kind} (expected {', '.join(imio.IMAGE_SUFFIXES)})")
    root = Path(job.images) if Path(job.images).is_dir() else None
    taken: dict[str, Path] = {}
    kept, duplicates = [], []
    for path in sources:
        name = imio.output_name(path, root)
        if name in taken:
            duplicates.append((path, f"its output name {name!r} is taken by {taken[name]}; rename one of them"))
        else:
            taken[name] = path
            kept.append((path, name))
    with concurrent.futures.ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        digests = list(pool.map(lambda item: _digest(item[0]), kept))
    return [_Input(path, name, digest) for (path, name), digest in zip(kept, digests)], duplicates


def _digest(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def _problem(path: Path, resolution: int, min_size: int | None, max_pixels: int, framing: str) -> str | None:
    """Why an input cannot be inverted, or None when it can."""
    try:
        imio.load_image(path, resolution, min_size=min_size, max_pixels=max_pixels, framing=framing)
    except FileFormatError as e:
        return e.problem
    return None


def _stale_message(out_dir: Path, stale: list[tuple[_Input, list[str]]]) -> str:
    fields: dict[str, str] = {}
    for _, diffs in stale:
        for d in diffs:
            fields.setdefault(d.split(":")[0], d)
    shown = "; ".join(list(fields.values())[:4]) + ("; ..." if len(fields) > 4 else "")
    return (f"{out_dir}: {len(stale)} result(s) there were computed otherwise ({shown}); set on_mismatch to "
            "'recompute' (--config.on_mismatch=recompute) to recompute them, or use another out_dir")


def read_json(path: Path) -> dict:
    """A JSON object file's contents, or ``{}`` when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


@dataclasses.dataclass(frozen=True)
class _Folder:
    """The output folder as this run found it, for the listed images."""

    fingerprint: dict[str, Any]
    fingerprint_hash: str
    preprocessing_hash: str  # what a skip holds for: the preprocessing and the reading settings
    listed: int  # images listed, duplicates included
    done: int  # results with this fingerprint from the same file
    stale: list[tuple[_Input, list[str]]]  # results computed otherwise, with the differences
    skipped_before: list[dict]  # remembered: skipped before, file and preprocessing unchanged
    failed_before: list[dict]  # remembered: failed before, file and fingerprint unchanged
    todo: list[_Input]  # everything else (stale included), in listing order
    previous: dict  # the summary.json found

    def summary(self, job: JobConfig, record: dict) -> dict[str, Any]:
        """``summary.json`` with ``record`` as the latest run: the folder as it stands, and every run's record
        (earlier runs kept; a summary written before runs were recorded becomes the first)."""
        prev = self.previous
        runs = list(prev.get("runs", [prev] if prev else [])) + [record]
        return dict(config=job.name, fingerprint=self.fingerprint, steps=record["steps"], images=self.listed,
                    done=self.done + record["done"], skipped=record["skipped"],
                    failed=self.failed_before + record["failed"], runs=runs)


def _sort(inputs: list[_Input], duplicates: list, out_dir: Path, fp: dict[str, Any], max_pixels: int) -> _Folder:
    """Sorts the listed images by what the folder holds for them (see the module docstring)."""
    fp_hash = _short_hash(fp)
    # A skip holds for the preprocessing and the reading policy: an image refused over the pixel limit (or by an
    # older policy) is read again when the limit (or the policy) changes. Results do not depend on the limit.
    pre_hash = _short_hash(dict(fp["preprocessing"], reading=imio.reading_settings(max_pixels)))
    previous = read_json(out_dir / "summary.json")

    def memory(entries: list) -> dict:
        return {(e["image"], e.get("sha256"), e["holds_for"]): e for e in entries
                if isinstance(e, dict) and "holds_for" in e}

    skipped, failed = memory(previous.get("skipped", [])), memory(previous.get("failed", []))
    done, stale, skipped_before, failed_before, todo = 0, [], [], [], []
    for item in inputs:
        if is_done(out_dir, item.name):
            diffs = _result_differences(read_json(out_dir / f"{item.name}.json"), fp, item.sha256)
            if not diffs:
                done += 1
                continue
            stale.append((item, diffs))
            todo.append(item)
        elif (entry := skipped.get((str(item.path), item.sha256, pre_hash))) is not None:
            skipped_before.append(entry)
        elif (entry := failed.get((str(item.path), item.sha256, fp_hash))) is not None:
            failed_before.append(entry)
        else:
            todo.append(item)
    return _Folder(fp, fp_hash, pre_hash, len(inputs) + len(duplicates), done, stale, skipped_before,
                   failed_before, todo, previous)


def _merge_records(parts: list[dict]) -> dict:
    merged = dict(parts[0])
    merged["done"] = sum(p["done"] for p in parts)
    merged["failed"] = [f for p in parts for f in p["failed"]]
    merged["skipped"] = parts[0]["skipped"] + [s for p in parts[1:] for s in p["skipped"] if s not in parts[0]["skipped"]]
    merged["seconds"] = max(p["seconds"] for p in parts)
    merged["seconds_per_image"] = merged["seconds"] / max(merged["done"], 1)
    return merged


def _remove_temporaries(out_dir: Path) -> None:
    """Deletes half-written files a killed run left (``.<file>.<random>`` from the atomic writers)."""
    for tmp in out_dir.glob(".*.*"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def global_batch(sharding: jax.sharding.Sharding, local: np.ndarray) -> jax.Array:
    """This process's rows of a batch as the global array sharded by ``sharding`` (all processes' rows)."""
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local)


def _write_image(out_dir: Path, item: _Input, w_LxD, recon, noise, losses, steps, seconds, batch, fp) -> None:
    arrays = {"w": np.asarray(w_LxD, np.float32)[None]}
    arrays.update({f"noise_{k}": np.asarray(n, np.float32) for k, n in enumerate(noise)})
    imio.atomic_save_npz(out_dir / f"{item.name}.npz", **arrays)
    imio.atomic_write_bytes(out_dir / f"{item.name}.png", imio.png_bytes(recon))
    imio.atomic_write_json(
        out_dir / f"{item.name}.json",
        dict(image=str(item.path), status="ok", losses=losses, steps=steps, seconds=seconds, batch_size=batch,
             fingerprint=fp, input_sha256=item.sha256, **item.record),
    )

"""The batch inversion job behind ``python -m magec_jax.invert``.

For a folder (or list file) of images and a model bundle it writes, per image ``<name>``:

  * ``<name>.npz``  key ``w``: float32 ``[1, num_ws, w_dim]`` (NVIDIA ``generate.py --projected-w`` reads
    it); with a noise stage also ``noise_<i>``: float32 ``[h, w]`` per noise layer;
  * ``<name>.png``  the reconstruction G(w) at the generator's resolution;
  * ``<name>.json`` final loss terms, steps, seconds, status; written LAST, so its presence marks the
    image as done;

and ``summary.json`` for the job (also rewritten after every batch). With an ``edit_grid`` block in the config,
the job then renders InterFaceGAN edits of every inverted image (``edits/<name>.png`` grids and edited
latents, by ``magec_jax.editing.render``) and tiles them into ``edit_grid.png``. Every file is written atomically. A job
killed at any moment and restarted with the same output folder redoes only the images without a
``<name>.json`` (and deletes the killed run's half-written temporaries; one job per output folder). Unreadable or unsuitable images are reported and skipped; an image whose loss becomes
non-finite is reported as failed while the rest of its batch finishes.

Multi-process (``jax.distributed``): every process lists the same pending images, takes every P-th one,
and runs the same number of batches (padding its own), so the global batch stays in lockstep; each process
writes only its own images.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from magec_jax import images as imio
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.inversion.engine import LOSS_TERMS, Engine, InversionSettings, Networks, NoisePhase, Phase, local_rows


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """``jax.distributed`` settings; ``num_processes == 1`` means a single process."""

    coordinator_address: str = ""
    num_processes: int = 1
    process_id: int = 0
    cpu_collectives: str = "gloo"


@dataclasses.dataclass(frozen=True)
class EditGrid:
    """Edits rendered after the inversion: one row per attribute, one column per strength."""

    attributes: tuple[str, ...]
    strengths: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """The typed form of an inversion config (see ``configs/``)."""

    bundle: str
    images: str
    out_dir: str
    batch_size: int
    settings: InversionSettings
    min_size: int | None = None
    matmul_precision: str = "highest"
    distributed: DistributedConfig = DistributedConfig()
    name: str = ""
    edit_grid: EditGrid | None = None

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "JobConfig":
        inv = config.inversion
        noise = None
        if inv.get("noise_steps", 0):
            noise = NoisePhase(steps=int(inv.noise_steps), lr=float(inv.noise_lr))
        settings = InversionSettings(
            phases=tuple(Phase(**dict(p)) for p in inv.phases),
            lr=float(inv.lr),
            lr_decay=float(inv.lr_decay),
            lr_decay_every=int(inv.lr_decay_every),
            adam_b1=float(inv.adam_b1),
            adam_b2=float(inv.adam_b2),
            adam_eps=float(inv.adam_eps),
            latent_space=str(inv.latent_space),
            magec_alpha=float(inv.magec_alpha),
            magec_mode=str(inv.magec_mode),
            noise_phase=noise,
            chunk_steps=int(inv.chunk_steps),
        )
        dist = config.get("distributed", ml_collections.ConfigDict())
        grid = config.get("edit_grid")
        edit_grid = None
        if grid is not None and grid.get("attributes"):
            edit_grid = EditGrid(tuple(grid.attributes), tuple(float(v) for v in grid.strengths))
        return cls(
            bundle=str(config.bundle),
            images=str(config.images),
            out_dir=str(config.out_dir),
            batch_size=int(config.batch_size),
            settings=settings,
            min_size=config.get("min_size"),
            matmul_precision=str(config.get("matmul_precision", "highest")),
            distributed=DistributedConfig(**dict(dist)),
            name=str(config.get("name", "")),
            edit_grid=edit_grid,
        )


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
    """An image is done when its JSON (written last) and its latent exist."""
    return (out_dir / f"{name}.json").is_file() and (out_dir / f"{name}.npz").is_file()


class _Progress:
    """One line per compiled chunk: batch, step, running loss, images done, ETA."""

    def __init__(self, total_images: int, num_batches: int, stream=sys.stderr):
        self.total, self.num_batches, self.stream = total_images, num_batches, stream
        self.done, self.t0 = 0, time.perf_counter()
        self.batch = 0
        self.batch_images = 0

    def chunk(self, steps_done: int, total_steps: int, state) -> None:
        loss = np.asarray(local_rows(state.losses))[: max(self.batch_images, 1), 0]
        elapsed = time.perf_counter() - self.t0
        frac = (self.batch + steps_done / total_steps) / max(self.num_batches, 1)
        eta = elapsed / frac * (1 - frac) if frac > 0 else float("nan")
        finite = loss[np.isfinite(loss)]
        shown = f"{finite.mean():.4f}" if finite.size else "nan"
        print(
            f"[{jax.process_index()}] batch {self.batch + 1}/{self.num_batches} step {steps_done}/{total_steps} "
            f"loss {shown} | {self.done}/{self.total} images done | {elapsed:.0f} s, ETA {_fmt(eta)}",
            file=self.stream, flush=True,
        )


def _fmt(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def run(
    config: ml_collections.ConfigDict,
    *,
    networks: Networks | None = None,
    engine: Engine | None = None,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Runs the inversion job described by ``config``; returns the summary (also written to disk).

    Args:
      config: an inversion config (``configs/*.py``).
      networks: already-built networks; by default the config's bundle is loaded.
      engine: an engine built for these networks and the config's settings, to reuse its compiled steps
        across jobs (the evaluation inverts originals and edited images with one engine per method).
      log: where one-line reports go.
    """
    job = JobConfig.from_config(config)
    init_distributed(job.distributed)
    jax.config.update("jax_default_matmul_precision", job.matmul_precision)
    if engine is not None and engine.settings != job.settings:
        raise ValueError("the engine given was built for other inversion settings than the config's")
    if networks is None and engine is None:
        from magec_jax.bundle import load_bundle

        networks = load_bundle(job.bundle).networks()
    out_dir = Path(job.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pid, nproc = jax.process_index(), jax.process_count()

    sources = imio.list_images(job.images)
    root = Path(job.images) if Path(job.images).is_dir() else None
    names = [imio.output_name(p, root) for p in sources]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise MagecError(f"{job.images}: several inputs map to the same output name(s): {', '.join(dup[:5])}")
    if pid == 0:
        _remove_temporaries(out_dir)
    pending = [(p, n) for p, n in zip(sources, names) if not is_done(out_dir, n)]
    _barrier("magec-listed")  # nobody writes before everybody has listed
    mine = pending[pid::nproc]
    local_devices = jax.local_device_count()
    batch = -(-job.batch_size // local_devices) * local_devices
    num_batches = -(-math.ceil(len(pending) / nproc) // batch) if pending else 0
    log(
        f"invert: {len(sources)} images, {len(sources) - len(pending)} already done, {len(pending)} to do; "
        f"process {pid}/{nproc} takes {len(mine)} in {num_batches} batches of {batch} "
        f"on {jax.device_count()} device(s)"
    )

    engine = engine if engine is not None else Engine(networks, job.settings)
    resolution = engine.nets.resolution
    summary: dict[str, Any] = dict(
        config=job.name, images=len(sources), already_done=len(sources) - len(pending), done=0,
        failed=[], skipped=[], seconds=0.0, steps=job.settings.total_steps
        + (job.settings.noise_phase.steps if job.settings.noise_phase else 0),
        devices=jax.device_count(), processes=nproc, batch_size=batch,
    )
    summary_path = out_dir / ("summary.json" if nproc == 1 else f"summary.process{pid}.json")
    progress = _Progress(len(mine), num_batches)
    t_job = time.perf_counter()

    def load(items: Sequence[tuple[Path, str]]):
        arrays, kept, skipped = [], [], []
        for path, name in items:
            try:
                arrays.append(imio.load_image(path, resolution, min_size=job.min_size))
                kept.append((path, name))
            except FileFormatError as e:
                skipped.append(dict(image=str(path), reason=e.problem))
        return arrays, kept, skipped

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(load, mine[0:batch])
        for b in range(num_batches):
            arrays, kept, skipped = future.result()
            if b + 1 < num_batches:
                future = pool.submit(load, mine[(b + 1) * batch: (b + 2) * batch])
            for s in skipped:
                log(f"skipped {s['image']}: {s['reason']}")
            summary["skipped"] += skipped
            local = np.zeros((batch, resolution, resolution, 3), np.float32)
            if arrays:
                local[: len(arrays)] = np.stack(arrays)
                local[len(arrays):] = arrays[-1]  # padding rows: a real image, results discarded
            progress.batch, progress.batch_images = b, len(kept)
            t0 = time.perf_counter()
            out = engine.invert(_global_batch(engine, local), on_chunk=progress.chunk)
            ws, recon = local_rows(out["ws"]), local_rows(out["images"])
            terms, failed = local_rows(out["terms"]), local_rows(out["failed"])
            noise = [local_rows(n) for n in out["noise"]]
            seconds = (time.perf_counter() - t0) / max(len(kept), 1)
            for i, (path, name) in enumerate(kept):
                losses = {t: float(v) for t, v in zip(LOSS_TERMS, terms[i])}
                if failed[i] or not np.all(np.isfinite(ws[i])):
                    summary["failed"].append(dict(image=str(path), reason="non-finite loss during optimisation"))
                    log(f"failed {path}: non-finite loss during optimisation")
                    continue
                _write_image(out_dir, name, path, ws[i], recon[i], [n[i] for n in noise], losses,
                             summary["steps"], seconds, batch)
                summary["done"] += 1
            progress.done += len(kept)
            summary["seconds"] = time.perf_counter() - t_job
            imio.atomic_write_json(summary_path, summary)
    summary["seconds"] = time.perf_counter() - t_job
    summary["seconds_per_image"] = summary["seconds"] / max(summary["done"], 1)
    imio.atomic_write_json(summary_path, summary)
    if nproc > 1:
        _barrier("magec-finished")
        if pid == 0:
            summary = _merge_summaries(out_dir, nproc)
    log(
        f"invert: {summary['done']} inverted, {len(summary['failed'])} failed, {len(summary['skipped'])} skipped "
        f"in {summary['seconds']:.1f} s -> {out_dir}"
    )
    if job.edit_grid is not None and pid == 0:
        render_edit_grid(job, out_dir, log)
    return summary


def render_edit_grid(job: JobConfig, out_dir: Path, log: Callable[[str], None]) -> Path | None:
    """Renders the config's InterFaceGAN edits of every latent in ``out_dir`` (``edits/``, resumable) and
    tiles the per-image grids into ``edit_grid.png``; returns its path (None when nothing is inverted)."""
    from magec_jax.editing.render import Edit, EditJob, run_edits

    if not list(out_dir.glob("*.npz")):
        return None
    sweeps = tuple(
        tuple(Edit("interfacegan", s, attribute=a) for s in job.edit_grid.strengths) for a in job.edit_grid.attributes
    )
    edits_dir = out_dir / "edits"
    run_edits(EditJob(bundle=job.bundle, latents=(str(out_dir),), out_dir=str(edits_dir), sweeps=sweeps), log=log)
    from PIL import Image

    grids = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(edits_dir.glob("*.png"))]
    width = max(g.shape[1] for g in grids)
    tiles = [np.pad(g, ((0, 0), (0, width - g.shape[1]), (0, 0)), constant_values=255) for g in grids]
    path = imio.atomic_write_bytes(out_dir / "edit_grid.png", imio.png_bytes(np.concatenate(tiles)))
    log(f"edit grid ({', '.join(job.edit_grid.attributes)} at {job.edit_grid.strengths}) -> {path}")
    return path


def _remove_temporaries(out_dir: Path) -> None:
    """Deletes half-written files a killed run left (``.<file>.<random>`` from the atomic writers)."""
    for tmp in out_dir.glob(".*.*"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def _global_batch(engine: Engine, local: np.ndarray) -> jax.Array:
    if jax.process_count() == 1:
        return jax.device_put(local, engine.data_sharding)
    return jax.make_array_from_process_local_data(engine.data_sharding, local)


def _write_image(out_dir: Path, name: str, source: Path, w_LxD, recon, noise, losses, steps, seconds, batch):
    arrays = {"w": np.asarray(w_LxD, np.float32)[None]}
    arrays.update({f"noise_{k}": np.asarray(n, np.float32) for k, n in enumerate(noise)})
    imio.atomic_save_npz(out_dir / f"{name}.npz", **arrays)
    imio.atomic_write_bytes(out_dir / f"{name}.png", imio.png_bytes(recon))
    imio.atomic_write_json(
        out_dir / f"{name}.json",
        dict(image=str(source), status="ok", losses=losses, steps=steps, seconds=seconds, batch_size=batch),
    )


def _merge_summaries(out_dir: Path, nproc: int) -> dict:
    import json

    parts = [json.loads((out_dir / f"summary.process{p}.json").read_text()) for p in range(nproc)]
    merged = dict(parts[0])
    merged["done"] = sum(p["done"] for p in parts)
    merged["failed"] = [f for p in parts for f in p["failed"]]
    merged["skipped"] = [s for p in parts for s in p["skipped"]]
    merged["seconds"] = max(p["seconds"] for p in parts)
    merged["seconds_per_image"] = merged["seconds"] / max(merged["done"], 1)
    imio.atomic_write_json(out_dir / "summary.json", merged)
    return merged

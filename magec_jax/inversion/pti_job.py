"""The pivotal-tuning stage of an inversion job (``config.pti``, run by ``python -m magec_jax.invert`` after the
inversion): each inverted image's latent is a pivot, and a weight delta of the generator is tuned so that the
tuned ``G(pivot)`` reproduces the image (``magec_jax.inversion.pti``).

For every image the job has a result for (``<name>.npz`` and ``<name>.json`` in ``out_dir``) it writes, in
``out_dir/pti/``:

  * ``<name>.npz``  the weight delta (``magec_jax.models.deltas``: plain named arrays and a ``meta`` JSON string;
    ``python -m magec_jax.edit --delta`` and ``python -m magec_jax.generate --delta`` apply it);
  * ``<name>.png``  the tuned reconstruction;
  * ``<name>.json`` (written last) the image, the pivot file and its sha256, ``status``, ``steps`` (updates
    taken), ``converged`` (stopped at the LPIPS threshold), ``losses`` (every term of the tuned reconstruction),
    ``pivot_losses`` (the inversion's), ``stop_losses`` (the tuning loss's columns at the last step evaluated),
    ``delta`` (kind, rank, bytes), ``seconds`` (per image), ``fingerprint``;
  * ``summary.json``: ``fingerprint``, ``images``, ``done``, ``failed`` and ``skipped`` (with reasons) and
    every run's record; with photographs (``config.align``), ``pasted/<photo>.png``: the tuned faces pasted back.

Each image is framed as the inversion framed it (``job.image_framing``); the tuning has no content mask, so a
letterbox's black bands are fitted like any pixel (the generator already makes them). Resumable like the
inversion: an image whose ``pti/<name>.json`` has this stage's fingerprint (the settings
run, after ``steps_scale``; the bundle; the generator's weights) and the current pivot's sha256 is done; a pivot
that changed is tuned again; results computed with other settings are refused in one line unless
``on_mismatch`` is ``recompute``. A tuning whose loss or gradient becomes non-finite is reported as failed and
remembered (not retried for the same pivot and settings) while its batch goes on; an image without a pivot, or
whose input cannot be read any more, is skipped with the reason. Multi-process runs split the images as the
inversion does (every process the same number of batches; each writes its own images).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from magec_jax import images as imio
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.faces import pipeline as faces
from magec_jax.faces.align import Alignment, AlignmentError
from magec_jax.inversion.engine import Networks, local_rows
from magec_jax.inversion.job import (
    JobConfig, NetworkSource, batch_plan, bundle_identity, differences, fmt_duration, global_batch, image_framing,
    read_json,
)
from magec_jax.inversion.pti import LOSS_COLUMNS, PTISettings, Tuner, locality_latents
from magec_jax.logs import Log, to_stderr
from magec_jax.models import deltas as deltas_lib
from magec_jax.models.stylegan2 import FROZEN
from magec_jax.weights import sha256_file

PTI_DIR = "pti"


def settings_run(job: JobConfig) -> PTISettings:
    """The tuning settings the stage runs: ``config.pti`` with ``steps_scale`` applied to its steps."""
    settings = job.pti.settings
    if job.steps_scale == 1.0:
        return settings
    return dataclasses.replace(settings, steps=max(1, round(settings.steps * job.steps_scale)),
                               chunk_steps=max(1, round(settings.chunk_steps * job.steps_scale)))


def fingerprint(job: JobConfig, generator_fp: str) -> dict[str, Any]:
    """What decides a tuning besides its pivot and image: the settings run (the progress interval left out; of
    the compute options only the resolved precision), the matmul precision, the bundle and the generator."""
    settings = settings_run(job)
    record = dataclasses.asdict(settings)
    del record["chunk_steps"]
    record["compute"] = dict(precision=settings.compute.resolved().precision)
    return json.loads(json.dumps(dict(settings=record, matmul_precision=job.matmul_precision,
                                      bundle=bundle_identity(job.bundle), generator=generator_fp)))


@dataclasses.dataclass(frozen=True)
class _Item:
    name: str
    pivot: Path
    pivot_sha256: str
    record: dict  # the inversion's <name>.json


def run(job: JobConfig, *, bundle: NetworkSource | None = None, networks: Networks | None = None,
        tuner: Tuner | None = None, tuned_dir: str | Path | None = None,
        log: Log = to_stderr) -> dict[str, Any] | None:
    """Runs the stage over ``job.out_dir`` when ``job.pti.enabled``; returns this run's record (None when off).

    The results go to ``tuned_dir`` (default ``job.out_dir/pti``; another folder lets several tunings share one
    inversion's pivots, as the evaluation's methods with ``pivots`` do). Give ``bundle`` (a loaded bundle: its
    networks are built only when there is something to tune, the deltas record its generator, and the locality
    regulariser samples its mapping network), ``networks`` (already built; with ``bundle`` too, they are used
    instead of building the bundle's), or a ``tuner`` built for them.

    Raises:
      MagecError: results computed with other settings and ``on_mismatch`` ``refuse``.
    """
    if not job.pti.enabled:
        return None
    if (tuner is None) == (bundle is None and networks is None):
        raise ValueError("the PTI stage needs a tuner, or a bundle and/or networks")
    settings = settings_run(job)
    out = Path(job.out_dir)
    tdir = out / PTI_DIR if tuned_dir is None else Path(tuned_dir)
    pid, nproc = jax.process_index(), jax.process_count()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t_stage = time.perf_counter()
    if bundle is not None:
        cfg, gen_vars = bundle.generator
        source = str(job.bundle)
    else:
        nets = tuner.nets if tuner is not None else networks
        cfg, gen_vars, source = None, {k: v for k, v in nets.generator.items() if k != FROZEN}, "networks given"
    # the pivots' shape and the images' size come from the bundle or the networks
    generator = deltas_lib.generator_record(cfg, gen_vars, source) if cfg is not None else dict(
        fingerprint=deltas_lib.generator_fingerprint(gen_vars), source=source)
    fp = fingerprint(job, generator["fingerprint"])
    fp_hash = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    previous = read_json(tdir / "summary.json")
    remembered = {(e.get("pivot_sha256"), e.get("holds_for")): e for e in previous.get("failed", [])
                  if isinstance(e, dict)}

    items, skipped = _list_pivots(out)
    done, stale, failed_before, todo = 0, [], [], []
    for item in items:
        result = read_json(tdir / f"{item.name}.json")
        if result.get("status") == "ok" and (tdir / f"{item.name}.npz").is_file():
            diffs = differences(result.get("fingerprint"), fp)
            if result.get("pivot_sha256") == item.pivot_sha256 and not diffs:
                done += 1
                continue
            if diffs:
                stale.append((item, diffs))
        elif (entry := remembered.get((item.pivot_sha256, fp_hash))) is not None:
            failed_before.append(entry)
            continue
        todo.append(item)
    if stale and job.on_mismatch == "refuse":
        shown = "; ".join(dict.fromkeys(d for _, diffs in stale for d in diffs[:2]))
        raise MagecError(f"{tdir}: {len(stale)} tuning result(s) there were computed otherwise ({shown}); set "
                         "on_mismatch to 'recompute' (--config.on_mismatch=recompute) or use another out_dir")

    given = None if bundle is not None else (tuner.nets if tuner is not None else networks)
    resolution = bundle.resolution() if given is None else given.resolution
    latent_shape = (cfg.num_ws, cfg.w_dim) if given is None else (given.num_ws, given.w_dim)
    valid: list[tuple[_Item, np.ndarray, np.ndarray]] = []
    for item in todo:
        try:
            image = item.record.get("image")
            if not image:
                raise FileFormatError(out / f"{item.name}.json", "no input image recorded")
            framing = "square" if item.record.get("alignment") else image_framing(job, bundle)
            valid.append((item, imio.load_image(image, resolution, min_size=job.min_size,
                                                max_pixels=job.max_image_pixels, framing=framing),
                          _pivot(item, latent_shape)))
        except FileFormatError as e:
            skipped.append(dict(name=item.name, reason=str(e)))
    for s in skipped:
        log(f"pti: skipped {s['name']}: {s['reason']}")
    tdir.mkdir(parents=True, exist_ok=True)
    mine = valid[pid::nproc]
    batch, num_batches = batch_plan(math.ceil(len(valid) / nproc), job.pti.batch_size or job.batch_size,
                                    jax.local_device_count())
    log(f"pti: {len(items)} pivots, {done} already tuned, {len(failed_before)} failed earlier, {len(valid)} to "
        f"tune ({settings.steps} steps, {settings.delta.kind} delta); process {pid}/{nproc} takes {len(mine)} in "
        f"{num_batches} batches of {batch}")
    record: dict[str, Any] = dict(started=started, seconds=0.0, pivots=len(items), already_done=done, done=0,
                                  failed=[], skipped=skipped, steps=settings.steps, batch_size=batch,
                                  devices=jax.device_count(), processes=nproc)
    written: list[_Item] = []
    if num_batches:
        if tuner is None:
            nets = networks if networks is not None else bundle.networks()
            ws = locality_latents(cfg, gen_vars, settings) if settings.locality.enabled else None
            if settings.locality.enabled and cfg is None:
                raise ValueError("the locality regulariser needs the bundle (its mapping network samples)")
            tuner = Tuner(nets, settings, locality_ws=ws)
        t0 = time.perf_counter()
        for b in range(num_batches):
            chunk = mine[b * batch: (b + 1) * batch]
            local = np.zeros((batch, resolution, resolution, 3), np.float32)
            pivots = np.zeros((batch, tuner.nets.num_ws, tuner.nets.w_dim), np.float32)
            for i in range(batch):
                _, local[i], pivots[i] = chunk[min(i, len(chunk) - 1)] if chunk else valid[0]  # padding: real rows

            def progress(steps_done: int, total: int, state, b=b) -> None:
                stopped = int(np.sum(local_rows(state.converged | state.failed)[: max(len(chunk), 1)]))
                elapsed = time.perf_counter() - t0
                frac = (b + steps_done / total) / num_batches
                log(f"[{pid}] pti batch {b + 1}/{num_batches} step {steps_done}/{total} | {stopped}/{len(chunk)} "
                    f"stopped | {elapsed:.0f} s, ETA {fmt_duration(elapsed / frac * (1 - frac))}")

            t_batch = time.perf_counter()
            result = tuner.tune(global_batch(tuner.data_sharding, local), global_batch(tuner.data_sharding, pivots),
                                on_chunk=progress)
            rows = {k: local_rows(result[k]) for k in ("images", "terms", "losses", "steps", "converged", "failed")}
            delta_rows = jax.tree.map(local_rows, result["delta"])
            seconds = (time.perf_counter() - t_batch) / max(len(chunk), 1)
            for i, (item, _, _) in enumerate(chunk):
                if rows["failed"][i]:
                    reason = "non-finite loss or gradient during tuning"
                    record["failed"].append(dict(name=item.name, reason=reason, pivot_sha256=item.pivot_sha256,
                                                 holds_for=fp_hash))
                    log(f"pti: failed {item.name}: {reason}")
                    continue
                delta = jax.tree.map(lambda leaf, i=i: leaf[i], delta_rows)
                _write(tdir, item, delta, rows, i, tuner, settings, generator, seconds, batch, fp)
                written.append(item)
                record["done"] += 1
            record["seconds"] = time.perf_counter() - t_stage
            _write_summary(tdir, fp, len(items), done, failed_before, record, previous, pid, nproc)
    record["seconds"] = time.perf_counter() - t_stage
    record["seconds_per_image"] = record["seconds"] / max(record["done"], 1)
    _write_summary(tdir, fp, len(items), done, failed_before, record, previous, pid, nproc)
    log(f"pti: {record['done']} tuned, {len(record['failed'])} failed, {len(skipped)} skipped in "
        f"{record['seconds']:.1f} s -> {tdir}")
    if job.align and pid == 0:
        paste_tuned(tdir, items, max_pixels=job.max_image_pixels, log=log)
    return record


def is_tuned(tuned_dir: str | Path, name: str) -> bool:
    """Whether ``tuned_dir`` holds a finished tuning of the image ``name`` (its record says ok, its delta exists);
    whether the settings still match is :func:`run`'s business."""
    tdir = Path(tuned_dir)
    return read_json(tdir / f"{name}.json").get("status") == "ok" and (tdir / f"{name}.npz").is_file()


def _list_pivots(out: Path) -> tuple[list[_Item], list[dict]]:
    """The inversion's results in ``out`` as pivots, and the records without a usable pivot (skipped)."""
    items, skipped = [], []
    for path in sorted(out.glob("*.json")):
        if path.name.startswith("summary"):
            continue
        record = read_json(path)
        if record.get("status") != "ok":
            continue
        pivot = path.with_suffix(".npz")
        if not pivot.is_file():
            skipped.append(dict(name=path.stem, reason=f"{pivot}: missing pivot (the inversion's latent file)"))
            continue
        items.append(_Item(path.stem, pivot, sha256_file(pivot), record))
    return items, skipped


def _pivot(item: _Item, shape: tuple[int, int]) -> np.ndarray:
    try:
        with np.load(item.pivot, allow_pickle=False) as npz:
            w = np.asarray(npz["w"], np.float32)
            noise = any(k.startswith("noise_") for k in npz.files)
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise FileFormatError(item.pivot, f"unreadable pivot ({e})") from None
    if noise:
        raise FileFormatError(item.pivot, "the pivot carries optimised noise maps (Image2StyleGAN++'s noise stage); "
                                          "pivotal tuning renders pivots with the generator's constant noise")
    w = w[0] if w.ndim == 3 and w.shape[0] == 1 else w
    if w.shape != shape or not np.all(np.isfinite(w)):
        raise FileFormatError(item.pivot, f"the pivot must be a finite {shape} latent, got shape {w.shape}")
    return w


def _write(tdir: Path, item: _Item, delta: Any, rows: dict, i: int, tuner: Tuner, settings: PTISettings,
           generator: dict, seconds: float, batch: int, fp: dict) -> None:
    deltas_lib.save_delta(tdir / f"{item.name}.npz", delta, settings.delta, generator, pivot=str(item.pivot),
                          pivot_sha256=item.pivot_sha256)
    imio.atomic_write_bytes(tdir / f"{item.name}.png", imio.png_bytes(rows["images"][i]))
    entries = {k: item.record[k] for k in ("photo", "face", "score", "alignment") if k in item.record}
    imio.atomic_write_json(tdir / f"{item.name}.json", dict(
        image=item.record.get("image"), pivot=str(item.pivot), pivot_sha256=item.pivot_sha256, status="ok",
        steps=int(rows["steps"][i]), converged=bool(rows["converged"][i]),
        losses={t: float(v) for t, v in zip(tuner.term_names, rows["terms"][i])},
        pivot_losses=item.record.get("losses", {}),
        stop_losses={c: float(v) for c, v in zip(LOSS_COLUMNS, rows["losses"][i])},
        delta=dict(settings.delta.to_dict(), bytes=deltas_lib.delta_bytes(delta)), seconds=seconds,
        batch_size=batch, fingerprint=fp, **entries))


def _write_summary(tdir: Path, fp: dict, pivots: int, done_before: int, failed_before: list, record: dict,
                   previous: dict, pid: int, nproc: int) -> None:
    if nproc > 1:  # each process keeps its own record; process 0's summary lists what it tuned
        imio.atomic_write_json(tdir / f"summary.process{pid}.json", record)
        if pid:
            return
    runs = list(previous.get("runs", [])) + [record]
    imio.atomic_write_json(tdir / "summary.json", dict(
        fingerprint=fp, images=pivots, done=done_before + record["done"], skipped=record["skipped"],
        failed=failed_before + record["failed"], runs=runs))


def paste_tuned(tdir: Path, items: Sequence[_Item], *, max_pixels: int = imio.MAX_IMAGE_PIXELS,
                log: Log = to_stderr) -> list[Path]:
    """``pti/pasted/<photo>.png``: each photograph with its tuned faces pasted back (faces the job aligned)."""
    groups: dict[Path, list[tuple[Path, Alignment]]] = {}
    photo_names: dict[Path, str] = {}  # a face <photo name>__face<j> belongs to <photo name>
    for item in items:
        crop, record = tdir / f"{item.name}.png", item.record
        if not (record.get("photo") and record.get("alignment") and crop.is_file()
                and (tdir / f"{item.name}.json").is_file()):
            continue
        try:
            groups.setdefault(Path(record["photo"]), []).append((crop, Alignment.from_json(record["alignment"])))
            photo_names[Path(record["photo"])] = item.name.rpartition("__face")[0] or item.name
        except (AlignmentError, ValueError) as e:
            log(f"not pasted {item.name}: {e}")
    written = []
    for photo, crops in groups.items():
        target = tdir / faces.PASTED / f"{photo_names[photo]}.png"
        if faces.up_to_date(target, [c for c, _ in crops] + [photo]):
            continue
        try:
            faces.write_pasted(target, photo, [(faces.read_rgb(c), a) for c, a in crops], max_pixels=max_pixels)
        except FileFormatError as e:
            log(f"not pasted {photo.name}: {e}")
            continue
        written.append(target)
    if written:
        log(f"pti: pasted {len(written)} photograph(s) -> {tdir / faces.PASTED}")
    return written

"""The GAN training run: data, state, the iteration loop, checkpoints, samples, export and the FD figure.

Everything lives in ``out_dir`` (the run folder)::

    config.json            the config of the latest run (architecture checked on resume)
    data/                  decoded-image cache (``<source>_r<R>_c<crop>.npy``, ``_letterbox`` + path list)
    heldout_people.txt     the people (or files, ``heldout_by``) held out of training (``training.data.is_heldout``)
    checkpoints/<step>/    orbax: the whole GANState (G, D, G_ema, Adam states, step, images seen, RNG)
    samples/               reals.png; fakes_kimg<kimg>_psi{1.0,0.7}.png (G_ema, seeds 0..N-1, constant noise)
    generator/             the latest G_ema in the converted format (kind 'stylegan2')
    metrics.jsonl          one JSON object per line: {"kind": "train" | "fd" | "fd_reference", ...}

A run in an ``out_dir`` that holds checkpoints resumes from the latest one (and drops the metric lines written
after it); the iteration, the data order and the random numbers continue as if uninterrupted.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from magec_jax.configdicts import from_configdict
from magec_jax.errors import MagecError
from magec_jax.images import atomic_write_bytes, atomic_write_json, grid, png_bytes
from magec_jax.models import stylegan2
from magec_jax.training import data as data_lib
from magec_jax.training import fd as fd_lib
from magec_jax.training import gan
from magec_jax.training.config import TrainGANConfig, default_config
from magec_jax.weights import Converted, save_converted
from ports.loss_nets import packaged_lpips

CONVERTER = "magec_jax.train_gan/1"
PSIS = (1.0, 0.7)


class MetricsLog:
    """Append-only JSON-lines file; :meth:`truncate_after` drops lines of steps a resumed run will redo."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        lines = [ln for ln in self.path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
        if len(kept) != len(lines):
            atomic_write_bytes(self.path, "".join(ln + "\n" for ln in kept).encode())

    def write(self, entry: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]


def _check_config(run_dir: Path, config: ml_collections.ConfigDict, cfg: TrainGANConfig) -> None:
    """Refuses to resume with another architecture or preprocessing; writes ``config.json``."""
    path = run_dir / "config.json"
    if path.exists() and (run_dir / "checkpoints").exists():
        old = json.loads(path.read_text())
        defaults = default_config().to_dict()  # a key the resumed run predates had its default then
        for key in ("resolution", "crop", "framing", "heldout_by", "g", "d"):
            if old.get(key, defaults[key]) != config.to_dict()[key]:
                raise MagecError(
                    f"{run_dir}: config.{key} differs from the run being resumed "
                    f"({old.get(key)} != {config.to_dict()[key]}); use another out_dir"
                )
    atomic_write_json(path, config.to_dict())


def _export_generator(run_dir: Path, cfg: TrainGANConfig, state: gan.GANState, kimg: float) -> Path:
    variables = jax.device_get(state.g_ema_variables())
    converted = Converted(
        kind=stylegan2.KIND,
        config=cfg.setup.g.to_dict(),
        variables=variables,
        manifest={"extra": {"trainer": CONVERTER, "kimg": kimg, "step": int(state.step), "data": str(cfg.data),
                            "crop": cfg.crop, "framing": cfg.framing, "heldout_fraction": cfg.heldout_fraction,
                            "heldout_by": cfg.heldout_by}},
    )
    return save_converted(run_dir / "generator", converted, converter=CONVERTER, overwrite=True)


def _save_samples(run_dir: Path, phases: gan.Phases, state: gan.GANState, z_NxZ: np.ndarray, kimg: float) -> None:
    variables = state.g_ema_variables()
    columns = min(8, len(z_NxZ))
    for psi in PSIS:
        images = np.asarray(phases.sample(variables, z_NxZ, np.float32(psi)))
        atomic_write_bytes(run_dir / "samples" / f"fakes_kimg{kimg:010.3f}_psi{psi:.1f}.png", png_bytes(grid(images, columns)))


class QualityFigure:
    """FD-VGG16-LPIPS-relu5_3 of G_ema against the held-out images, with its real-vs-real reference."""

    def __init__(self, cfg: TrainGANConfig, faces: data_lib.FaceDataset, train_idx: np.ndarray,
                 heldout_idx: np.ndarray):
        if len(heldout_idx) < 2:
            raise MagecError(f"{cfg.data}: {len(heldout_idx)} held-out images; the FD figure needs at least 2")
        self.cfg = cfg
        self.num_images = cfg.metric_num_images or len(heldout_idx)
        self.feature_fn = fd_lib.vgg_feature_fn(packaged_lpips(), fast_compile=cfg.fast_compile)
        heldout = faces.images_NxHxWx3[heldout_idx]
        self.heldout = fd_lib.feature_stats(
            fd_lib.compute_features(self.feature_fn, heldout, len(heldout), cfg.metric_batch)
        )
        pick = np.random.default_rng([cfg.seed, 3]).permutation(len(train_idx))[: self.num_images]
        self._train_images = faces.images_NxHxWx3[np.sort(train_idx[pick])]

    def reference(self) -> float:
        """FD between ``num_images`` training reals (a fixed random subset) and the held-out set: the floor."""
        train = self._train_images
        feats = fd_lib.compute_features(self.feature_fn, train, len(train), self.cfg.metric_batch)
        return fd_lib.frechet_distance(self.heldout, fd_lib.feature_stats(feats))

    def __call__(self, phases: gan.Phases, state: gan.GANState) -> float:
        """FD between ``num_images`` G_ema images (psi 1, constant noise, fixed latents) and the held-out set."""
        g, batch = self.cfg.setup.g, self.cfg.metric_batch
        padded = -(-self.num_images // batch) * batch  # every sample call has the compiled batch size
        z_NxZ = np.random.default_rng([self.cfg.seed, 4]).standard_normal((padded, g.z_dim), np.float32)
        variables = state.g_ema_variables()

        def generate(start: int, count: int) -> np.ndarray:
            return np.asarray(phases.sample(variables, z_NxZ[start : start + batch], np.float32(1.0)))[:count]

        feats = fd_lib.compute_features(self.feature_fn, generate, self.num_images, batch)
        return fd_lib.frechet_distance(self.heldout, fd_lib.feature_stats(feats))


def _crossed(before: int, after: int, every_kimg: float) -> bool:
    """Whether ``[before, after)`` images crossed a multiple of ``every_kimg`` thousand images."""
    every = every_kimg * 1000
    return every > 0 and math.floor(after / every) > math.floor(before / every)


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Trains (or resumes) as the config says until ``total_kimg``; returns a summary.

    Returns:
      ``{'step', 'kimg', 'resumed_from', 'generator', 'train_images', 'heldout_images', 'fd',
      'fd_reference', 'metric', 'skipped_images'}`` (``fd`` is the last figure of this run, None if none was
      computed; ``skipped_images``: the data's unusable files, ``{image, reason}``).
    """
    cfg = from_configdict(TrainGANConfig, config)
    setup = cfg.setup
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_config(run_dir, config, cfg)

    faces = data_lib.load_faces(cfg.data, cfg.resolution, crop=cfg.crop, cache_dir=run_dir / "data",
                                max_images=cfg.max_images or None, max_pixels=cfg.max_image_pixels,
                                framing=cfg.framing, log=lambda line: print(line, flush=True))
    train_idx, heldout_idx = data_lib.split_by_person(faces.paths, cfg.heldout_fraction, cfg.heldout_by)
    heldout = data_lib.heldout_people(faces.paths, cfg.heldout_fraction, cfg.heldout_by)
    atomic_write_bytes(run_dir / "heldout_people.txt", "".join(p + "\n" for p in heldout).encode())
    if len(train_idx) < setup.batch_size:
        raise MagecError(f"{cfg.data}: {len(train_idx)} training images do not fill one batch of {setup.batch_size}")
    framing_text = f"from the central {cfg.crop}px" if cfg.framing == "square" else "letterboxed"
    unusable = f", {len(faces.skipped)} unusable skipped (listed in data/*.json)" if faces.skipped else ""
    print(f"data: {len(faces.paths)} images, {len(train_idx)} for training, {len(heldout_idx)} held out "
          f"({cfg.resolution}px, {framing_text}){unusable}", flush=True)

    manager = ocp.CheckpointManager(
        (run_dir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_checkpoints, enable_async_checkpointing=False),
    )
    log = MetricsLog(run_dir / "metrics.jsonl")
    resumed_from = manager.latest_step()
    if resumed_from is None:
        state = gan.init_state(setup, cfg.seed, fast_compile=cfg.fast_compile)
        atomic_write_bytes(run_dir / "samples" / "reals.png",
                           png_bytes(grid(faces.images_NxHxWx3[train_idx[: cfg.sample_seeds]], 8)))
    else:
        abstract = gan.abstract_state(setup)._asdict()
        state = gan.GANState(**manager.restore(resumed_from, args=ocp.args.StandardRestore(abstract)))
        log.truncate_after(resumed_from)
        print(f"resuming from step {resumed_from} ({int(state.images_seen) / 1000:.1f} kimg)", flush=True)
    phases = gan.compile_phases(setup, cfg.fast_compile)
    step, images = int(state.step), int(state.images_seen)
    print(f"G {gan.num_params(state.g_params)} params, D {gan.num_params(state.d_params)} params, "
          f"batch {setup.batch_size}, step {step} of {cfg.total_steps}", flush=True)

    quality = None
    fd_value = None
    fd_reference = next((e["value"] for e in log.read() if e["kind"] == "fd_reference"), None)
    if cfg.metric_kimg > 0:
        quality = QualityFigure(cfg, faces, train_idx, heldout_idx)
        if fd_reference is None:
            fd_reference = quality.reference()
            log.write({"kind": "fd_reference", "metric": fd_lib.METRIC_NAME, "value": fd_reference, "step": 0,
                       "num_images": quality.num_images, "heldout_images": len(heldout_idx),
                       "what": "held-out reals vs training reals"})
        print(f"{fd_lib.METRIC_NAME} reference (held-out vs training reals, {quality.num_images} images): "
              f"{fd_reference:.3f}", flush=True)

    z_grid = stylegan2.seed_latents(range(cfg.sample_seeds), setup.g.z_dim)
    window: list[gan.Metrics] = []
    t_window, images_window = time.perf_counter(), images
    paused = 0.0  # seconds of checkpoints, exports and FD figures inside the current logging window
    while step < cfg.total_steps:
        positions = data_lib.batch_indices(len(train_idx), setup.batch_size, step, cfg.seed)
        reals = faces.images_NxHxWx3[train_idx[positions]]
        state, metrics = gan.train_iteration(phases, state, reals, setup, step)
        window.append(metrics)
        step += 1
        before, images = images, images + setup.batch_size
        done = step == cfg.total_steps
        if step % cfg.log_every == 0 or done:
            fetched = jax.device_get(window)
            seconds = time.perf_counter() - t_window - paused
            entry = {"kind": "train", "step": step, "kimg": images / 1000,
                     "kimg_per_hour": (images - images_window) / 1000 / seconds * 3600, "seconds": seconds}
            for key in sorted({k for m in fetched for k in m}):
                entry[key] = float(np.mean([m[key] for m in fetched if key in m]))
            log.write(entry)
            print(f"step {step}  kimg {images / 1000:.3f}  {entry['kimg_per_hour']:.2f} kimg/h  "
                  + "  ".join(f"{k} {entry[k]:.4g}" for k in ("loss_g", "loss_d", "r1_penalty", "pl_penalty")
                              if k in entry), flush=True)
            window, t_window, images_window, paused = [], time.perf_counter(), images, 0.0
        do_checkpoint = _crossed(before, images, cfg.checkpoint_kimg) or done
        do_metric = quality is not None and (_crossed(before, images, cfg.metric_kimg) or done)
        if do_checkpoint or do_metric:
            jax.block_until_ready(state)
            t_pause = time.perf_counter()
            if do_checkpoint:
                manager.save(step, args=ocp.args.StandardSave(state._asdict()), force=True)
                _export_generator(run_dir, cfg, state, images / 1000)
                _save_samples(run_dir, phases, state, z_grid, images / 1000)
                print(f"checkpoint at step {step}, exported {run_dir / 'generator'}", flush=True)
            if do_metric:
                fd_value = quality(phases, state)
                log.write({"kind": "fd", "metric": fd_lib.METRIC_NAME, "value": fd_value, "step": step,
                           "kimg": images / 1000, "num_images": quality.num_images, "reference": fd_reference})
                print(f"{fd_lib.METRIC_NAME} at {images / 1000:.3f} kimg: {fd_value:.3f} "
                      f"(reference {fd_reference:.3f})", flush=True)
            paused += time.perf_counter() - t_pause
    manager.wait_until_finished()
    manager.close()
    return {
        "step": step, "kimg": images / 1000, "resumed_from": resumed_from,
        "generator": str(run_dir / "generator"), "train_images": len(train_idx),
        "heldout_images": len(heldout_idx), "fd": fd_value, "fd_reference": fd_reference,
        "metric": fd_lib.METRIC_NAME, "skipped_images": list(faces.skipped),
    }

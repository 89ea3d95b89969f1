"""The classifier training run: data, sharded steps, orbax checkpoints (resume), per-epoch validation,
``metrics.json`` and the final converted ``resnet50/`` weights."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from magec_jax.classifier.config import TrainConfig, default_config
from magec_jax.classifier.data import Loader, read_attribute_table, split, train_batches
from magec_jax.classifier.steps import StepSetup, TrainState, eval_step, init_state, train_step
from magec_jax.configdicts import from_configdict
from magec_jax.errors import MagecError
from magec_jax.images import atomic_write_json
from magec_jax.models import resnet
from magec_jax.weights import Converted, save_converted


def evaluate(state: TrainState, loader: Loader, val: np.ndarray, labels_NxK: np.ndarray, setup: StepSetup,
             batch_size: int, put) -> np.ndarray:
    """Per-attribute accuracy ``[K]`` on the usable validation images (the last batch padded, padding and
    unusable images' stand-ins ignored)."""
    correct, counted = np.zeros(labels_NxK.shape[1]), 0
    for start in range(0, len(val), batch_size):
        idx = val[start : start + batch_size]
        padded = np.concatenate([idx, np.repeat(idx[-1:], batch_size - len(idx))])
        images, used = loader.submit(padded).result()
        logits = np.asarray(eval_step(state.params, state.batch_stats, put(images), setup=setup))
        own = used[: len(idx)] == idx  # rows holding their own image
        correct += np.sum(((logits[: len(idx)] > 0) == (labels_NxK[idx] > 0.5))[own], axis=0)
        counted += int(own.sum())
    return correct / max(counted, 1)


PREPROCESSING = ("image_size", "framing")  # what a resumed run must share with the run it resumes


def check_resume(out_dir: Path, config: ml_collections.ConfigDict) -> None:
    """Refuses to resume a run in ``out_dir`` with other preprocessing (``PREPROCESSING``); writes ``config.json``.

    Raises:
      MagecError: naming ``out_dir`` and the setting that differs.
    """
    path = out_dir / "config.json"
    if path.exists() and (out_dir / "checkpoints").exists():
        old, new = json.loads(path.read_text()), config.to_dict()
        defaults = default_config().to_dict()  # a key the resumed run predates had its default then
        for key in PREPROCESSING:
            if old.get(key, defaults[key]) != new[key]:
                raise MagecError(f"{out_dir}: config.{key} differs from the run being resumed "
                                 f"({old.get(key, defaults[key])!r} != {new[key]!r}); use another out_dir")
    atomic_write_json(path, config.to_dict())


def run(config: ml_collections.ConfigDict, *, max_steps: int | None = None) -> dict:
    """Trains (or resumes) as the config says; returns the summary written to ``metrics.json``.

    ``max_steps`` stops after that many total steps (with a checkpoint), for chunked runs and tests.
    """
    cfg = from_configdict(TrainConfig, config)
    out_dir = Path(cfg.out_dir)
    data = read_attribute_table(Path(cfg.attributes), Path(cfg.images), cfg.attribute_subset)
    train, val = split(len(data.paths), cfg.val_fraction, cfg.seed)
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train)} training images do not fill one batch of {cfg.batch_size}")
    setup = StepSetup(
        num_classes=len(data.attribute_names), dtype=cfg.dtype, head_steps=cfg.head_epochs * steps_per_epoch,
        full_steps=cfg.full_epochs * steps_per_epoch, head_lr=cfg.head_lr,
        group_lrs=(cfg.lr_min, math.sqrt(cfg.lr_min * cfg.lr_max), cfg.lr_max), schedule=cfg.schedule,
        pct_start=cfg.pct_start, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
    )
    total = setup.head_steps + setup.full_steps
    stop = total if max_steps is None else min(total, max_steps)

    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    batch_sharding = NamedSharding(mesh, P("data"))

    def put(x: np.ndarray) -> jax.Array:
        return jax.device_put(x, batch_sharding)

    out_dir.mkdir(parents=True, exist_ok=True)
    check_resume(out_dir, config)
    manager = ocp.CheckpointManager(
        (out_dir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep_checkpoints, save_interval_steps=cfg.checkpoint_every,
            enable_async_checkpointing=False,  # the next step donates the state's buffers
        ),
    )
    metrics_path = out_dir / "metrics.json"
    summary = {
        "attribute_names": list(data.attribute_names), "train_images": len(train), "val_images": len(val),
        "steps_per_epoch": steps_per_epoch, "total_steps": total, "image_size": cfg.image_size,
        "framing": cfg.framing,
    }
    loader = Loader(data.paths, cfg.image_size, cfg.num_workers, max_pixels=cfg.max_image_pixels,
                    framing=cfg.framing)
    with jax.default_matmul_precision(cfg.matmul_precision):
        state = init_state(setup, cfg.image_size, cfg.seed, Path(cfg.init_weights) if cfg.init_weights else None)
        resumed_from = manager.latest_step()
        history: list[dict] = []
        if resumed_from is not None:
            abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state._asdict())
            state = TrainState(**manager.restore(resumed_from, args=ocp.args.StandardRestore(abstract)))
            if metrics_path.exists():
                history = [h for h in json.loads(metrics_path.read_text())["history"] if h["step"] <= resumed_from]
            print(f"resuming from step {resumed_from} of {total}")
        state = jax.device_put(state, NamedSharding(mesh, P()))
        step = int(state.step)
        losses: list[jax.Array] = []
        t0, images_seen = time.perf_counter(), 0
        for index, images, labels, flips in train_batches(loader, train, data.labels_NxK, cfg, step, stop):
            head_only = index < setup.head_steps
            state, loss = train_step(state, put(images), put(labels), put(flips), setup=setup, head_only=head_only)
            losses.append(loss)
            step = index + 1
            images_seen += cfg.batch_size
            if step % cfg.log_every == 0 or step == stop:
                mean_loss = float(np.mean(jax.device_get(losses)))
                rate = images_seen / (time.perf_counter() - t0)
                print(f"step {step}/{total}  loss {mean_loss:.4f} (epoch mean)  {rate:.1f} img/s")
            if step % steps_per_epoch == 0 or step == stop:
                train_loss = float(np.mean(jax.device_get(losses)))
                entry = {"step": step, "epoch": step / steps_per_epoch, "train_loss": train_loss}
                if len(val):
                    accuracy = evaluate(state, loader, val, data.labels_NxK, setup, cfg.batch_size, put)
                    entry["val_accuracy"] = dict(zip(data.attribute_names, map(float, accuracy)))
                    entry["val_accuracy_mean"] = float(np.mean(accuracy))
                    print(f"epoch {step / steps_per_epoch:g}: val accuracy mean {entry['val_accuracy_mean']:.4f}  "
                          + "  ".join(f"{n} {a:.3f}" for n, a in entry["val_accuracy"].items()))
                history.append(entry)
                losses = []
                atomic_write_json(metrics_path, dict(summary, step=step, resumed_from=resumed_from, history=history,
                                                     skipped_images=loader.skipped_images()))
            manager.save(step, args=ocp.args.StandardSave(state._asdict()), force=step == stop)
        manager.wait_until_finished()
        loader.close()

    summary.update(step=step, resumed_from=resumed_from, history=history, finished=step == total,
                   skipped_images=loader.skipped_images())
    if step == total:
        converted = Converted(
            kind=resnet.KIND,
            config=resnet.ResNetConfig(data.attribute_names, cfg.image_size).to_dict(),
            variables=jax.device_get({"params": state.params, "batch_stats": state.batch_stats}),
            manifest={"extra": {"val_accuracy": history[-1].get("val_accuracy") if history else None,
                                "framing": cfg.framing}},  # how its inputs were framed (images.frame)
        )
        summary["weights"] = str(save_converted(out_dir / "resnet50", converted,
                                                converter="magec_jax.train_classifier/1", overwrite=True))
    atomic_write_json(metrics_path, summary)
    return summary


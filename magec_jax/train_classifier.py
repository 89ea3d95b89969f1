"""Train the attribute descriptor F: a ResNet-50 with K sigmoid outputs on a CelebA-format attribute table.

    python -m magec_jax.train_classifier --config configs/classifier_celeba.py \
        --config.images=DIR --config.attributes=list_attr_celeba.txt --config.workdir=RUN

Data: ``attributes`` is a ``list_attr_celeba.txt``-style table (a count line, a header of attribute names,
then ``<image path relative to images> v1 v2 ...`` with values 1 / -1); ``attribute_names`` picks columns
(default: all). Images are read by the project's input policy (centre square, Lanczos to ``image_size``)
and split once into train/validation by ``seed``.

Schedule (METHOD.md): ``head_epochs`` training only the last layer (body frozen, BatchNorm on its running
statistics) at ``head_lr``, then ``full_epochs`` of all layers with discriminative learning rates spaced
geometrically from ``lr_min`` (stem, layer1, layer2) over the middle group (layer3, layer4) to ``lr_max``
(fc), as fastai's ``slice(lr_min, lr_max)``; AdamW, one-cycle schedule per phase by default. BCE loss.

Outputs in ``workdir``: ``checkpoints/`` (orbax; a rerun of the same command resumes from the latest),
``metrics.json`` (per-epoch loss and per-attribute validation accuracy), and ``resnet50/`` (the final
weights in the converted format, kind ``resnet50``; load with ``magec_jax.models.resnet.resnet_descriptor``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from magec_jax.cli import config_main
from magec_jax.errors import FileFormatError
from magec_jax.images import atomic_write_json, load_image
from magec_jax.models import resnet
from magec_jax.weights import Converted, load_converted, save_converted

GROUPS = ("early", "late", "head")  # stem + layer1 + layer2 | layer3 + layer4 | fc


def default_config() -> ml_collections.ConfigDict:
    """The paper's schedule at 224x224 with placeholder paths; ``configs/classifier_*.py`` adapt it."""
    c = ml_collections.ConfigDict()
    c.images = ""  # folder the table's image names are relative to
    c.attributes = ""  # list_attr_celeba.txt-format table
    c.attribute_names = ""  # comma-separated subset of the table's columns; empty: all
    c.workdir = ""  # checkpoints/, metrics.json, resnet50/ (final converted weights)
    c.init_weights = ""  # converted resnet50 directory (ImageNet) for every layer but fc; empty: random init
    c.image_size = 224
    c.batch_size = 64
    c.val_fraction = 0.1
    c.seed = 0
    c.flip = True  # random horizontal flips
    # Phase 1: the last layer only (body frozen); METHOD.md: 2 epochs at lr 0.02.
    c.head_epochs = 2
    c.head_lr = 0.02
    # Phase 2: all layers, discriminative lrs lr_min (stem..layer2) .. lr_max (fc); the epoch count is ours.
    c.full_epochs = 4
    c.lr_min = 0.002
    c.lr_max = 0.02
    c.schedule = "one_cycle"  # per phase; or "constant"
    c.pct_start = 0.25  # one-cycle warm-up fraction
    c.b1 = 0.9
    c.b2 = 0.99
    c.eps = 1e-5
    c.weight_decay = 0.01  # decoupled (AdamW)
    c.dtype = "float32"  # compute dtype; "bfloat16" on accelerators
    c.matmul_precision = "default"
    c.log_every = 100
    c.checkpoint_every = 1000
    c.keep_checkpoints = 2
    c.num_workers = 8  # image-decoding threads
    return c


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The typed form of the config (see :func:`default_config` for each field's meaning)."""

    images: Path
    attributes: Path
    workdir: Path
    attribute_names: tuple[str, ...]
    init_weights: Path | None
    image_size: int
    batch_size: int
    val_fraction: float
    seed: int
    flip: bool
    head_epochs: int
    head_lr: float
    full_epochs: int
    lr_min: float
    lr_max: float
    schedule: str
    pct_start: float
    b1: float
    b2: float
    eps: float
    weight_decay: float
    dtype: str
    matmul_precision: str
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    num_workers: int

    @classmethod
    def from_config(cls, c: ml_collections.ConfigDict) -> "TrainConfig":
        for name in ("images", "attributes", "workdir"):
            if not c[name]:
                raise ValueError(f"config.{name} must be set")
        if c.schedule not in ("one_cycle", "constant"):
            raise ValueError(f"config.schedule must be 'one_cycle' or 'constant', got {c.schedule!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: c[k] for k in fields}
        values.update(
            images=Path(c.images), attributes=Path(c.attributes), workdir=Path(c.workdir),
            init_weights=Path(c.init_weights) if c.init_weights else None,
            attribute_names=tuple(n.strip() for n in c.attribute_names.split(",") if n.strip()),
        )
        return cls(**values)


# ----------------------------------------------------------------------------------------------------------
# Data.


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
    """Decodes batches of images on a thread pool, one batch ahead."""

    def __init__(self, paths: tuple[Path, ...], image_size: int, num_workers: int):
        self._paths, self._size = paths, image_size
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, num_workers))

    def submit(self, indices: np.ndarray) -> concurrent.futures.Future:
        """Starts decoding ``paths[indices]``; the future gives ``[len(indices), S, S, 3]`` in [-1, 1]."""
        futures = [self._pool.submit(load_image, self._paths[i], self._size, min_size=1) for i in indices]
        return self._pool.submit(lambda: np.stack([f.result() for f in futures]))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def train_batches(
    loader: Loader, train: np.ndarray, labels_NxK: np.ndarray, cfg: TrainConfig, start: int, stop: int
):
    """Yields ``(step, images, labels, flips)`` for steps ``start .. stop - 1``, decoding one batch ahead.

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
        images = upcoming.result()
        if step + 1 < stop:
            upcoming = loader.submit(plan(step + 1)[0])
        yield step, images, labels_NxK[indices], flips


# ----------------------------------------------------------------------------------------------------------
# Model, optimiser and the pure steps.


@dataclasses.dataclass(frozen=True)
class StepSetup:
    """Everything the jitted steps close over (hashable, so that equal setups share compilations)."""

    num_classes: int
    dtype: str
    head_steps: int
    full_steps: int
    head_lr: float
    group_lrs: tuple[float, float, float]
    schedule: str
    pct_start: float
    b1: float
    b2: float
    eps: float
    weight_decay: float

    @property
    def model(self) -> resnet.ResNet50:
        return resnet.ResNet50(num_classes=self.num_classes, dtype=jnp.dtype(self.dtype))


class TrainState(NamedTuple):
    """Everything a checkpoint holds: steps done, the variables and the optimiser state."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def _phase_schedule(peak: float, steps: int, setup: StepSetup) -> optax.Schedule:
    if setup.schedule == "constant" or steps == 0:
        return optax.constant_schedule(peak)
    return optax.cosine_onecycle_schedule(steps, peak, pct_start=setup.pct_start)


def make_optimizer(setup: StepSetup) -> optax.GradientTransformation:
    """AdamW per parameter group; group lrs are 0 in the head phase except the head's."""
    transforms = {}
    for group, peak in zip(GROUPS, setup.group_lrs):
        head_phase = _phase_schedule(setup.head_lr if group == "head" else 0.0, setup.head_steps, setup)
        full_phase = _phase_schedule(peak, setup.full_steps, setup)
        lr = optax.join_schedules([head_phase, full_phase], [setup.head_steps])
        transforms[group] = optax.adamw(lr, b1=setup.b1, b2=setup.b2, eps=setup.eps, weight_decay=setup.weight_decay)
    return optax.multi_transform(transforms, param_groups)


def param_groups(params: dict) -> dict:
    """The group label of every parameter, by top-level module (``conv1``, ``layer3.2``, ``fc``, ...)."""

    def group(module: str) -> str:
        if module == "fc":
            return "head"
        return "late" if module.startswith(("layer3", "layer4")) else "early"

    return {module: jax.tree_util.tree_map(lambda _, g=group(module): g, sub) for module, sub in params.items()}


def _bce_loss(logits_BxK: jax.Array, labels_BxK: jax.Array) -> jax.Array:
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits_BxK, labels_BxK))


@functools.partial(jax.jit, static_argnames=("setup", "head_only"), donate_argnums=0)
def train_step(
    state: TrainState, images_BxSxSx3: jax.Array, labels_BxK: jax.Array, flip_B: jax.Array, *,
    setup: StepSetup, head_only: bool,
) -> tuple[TrainState, jax.Array]:
    """One optimisation step on a batch in [-1, 1]; ``head_only`` freezes the body (eval-mode BatchNorm)."""
    flipped = jnp.where(flip_B[:, None, None, None], images_BxSxSx3[:, :, ::-1], images_BxSxSx3)
    x = resnet.imagenet_normalize(flipped)

    def loss_fn(params):
        if head_only:
            params = {k: v if k == "fc" else jax.lax.stop_gradient(v) for k, v in params.items()}
            out = setup.model.apply({"params": params, "batch_stats": state.batch_stats}, x)
            return _bce_loss(out.logits_BxK, labels_BxK), state.batch_stats
        out, updates = setup.model.apply(
            {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return _bce_loss(out.logits_BxK, labels_BxK), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = make_optimizer(setup).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, batch_stats, opt_state), loss


@functools.partial(jax.jit, static_argnames=("setup",))
def eval_step(params, batch_stats, images_BxSxSx3: jax.Array, *, setup: StepSetup) -> jax.Array:
    """Eval-mode logits of a batch in [-1, 1]."""
    x = resnet.imagenet_normalize(images_BxSxSx3)
    return setup.model.apply({"params": params, "batch_stats": batch_stats}, x).logits_BxK


@functools.partial(jax.jit, static_argnames=("setup", "image_size"))
def _init_variables(key: jax.Array, *, setup: StepSetup, image_size: int) -> dict:
    return setup.model.init(key, jnp.zeros((1, image_size, image_size, 3), jnp.float32))


def init_state(setup: StepSetup, image_size: int, seed: int, init_weights: Path | None) -> TrainState:
    """Fresh variables (seeded), with every layer but ``fc`` taken from ``init_weights`` when given."""
    variables = _init_variables(jax.random.key(seed), setup=setup, image_size=image_size)
    params, batch_stats = dict(variables["params"]), dict(variables["batch_stats"])
    if init_weights is not None:
        source = load_converted(init_weights, kind=resnet.KIND).variables
        for tree, collection in ((params, "params"), (batch_stats, "batch_stats")):
            for module in tree:
                if module == "fc":
                    continue
                loaded = jax.tree_util.tree_map(jnp.asarray, source[collection][module])
                if jax.tree_util.tree_map(jnp.shape, loaded) != jax.tree_util.tree_map(jnp.shape, tree[module]):
                    raise FileFormatError(init_weights, f"{collection}/{module} does not fit a ResNet-50")
                tree[module] = loaded
    return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, make_optimizer(setup).init(params))


# ----------------------------------------------------------------------------------------------------------
# The run.


def evaluate(state: TrainState, loader: Loader, val: np.ndarray, labels_NxK: np.ndarray, setup: StepSetup,
             batch_size: int, put) -> np.ndarray:
    """Per-attribute accuracy ``[K]`` on the validation indices (the last batch padded, padding ignored)."""
    correct = np.zeros(labels_NxK.shape[1])
    for start in range(0, len(val), batch_size):
        idx = val[start : start + batch_size]
        padded = np.concatenate([idx, np.repeat(idx[-1:], batch_size - len(idx))])
        images = put(loader.submit(padded).result())
        logits = np.asarray(eval_step(state.params, state.batch_stats, images, setup=setup))
        correct += np.sum((logits[: len(idx)] > 0) == (labels_NxK[idx] > 0.5), axis=0)
    return correct / len(val)


def run(config: ml_collections.ConfigDict, *, max_steps: int | None = None) -> dict:
    """Trains (or resumes) as the config says; returns the summary written to ``metrics.json``.

    ``max_steps`` stops after that many total steps (with a checkpoint), for chunked runs and tests.
    """
    cfg = TrainConfig.from_config(config)
    data = read_attribute_table(cfg.attributes, cfg.images, cfg.attribute_names)
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

    cfg.workdir.mkdir(parents=True, exist_ok=True)
    manager = ocp.CheckpointManager(
        (cfg.workdir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep_checkpoints, save_interval_steps=cfg.checkpoint_every,
            enable_async_checkpointing=False,  # the next step donates the state's buffers
        ),
    )
    metrics_path = cfg.workdir / "metrics.json"
    summary = {
        "attribute_names": list(data.attribute_names), "train_images": len(train), "val_images": len(val),
        "steps_per_epoch": steps_per_epoch, "total_steps": total,
    }
    loader = Loader(data.paths, cfg.image_size, cfg.num_workers)
    with jax.default_matmul_precision(cfg.matmul_precision):
        state = init_state(setup, cfg.image_size, cfg.seed, cfg.init_weights)
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
                atomic_write_json(metrics_path, dict(summary, step=step, resumed_from=resumed_from, history=history))
            manager.save(step, args=ocp.args.StandardSave(state._asdict()), force=step == stop)
        manager.wait_until_finished()
        loader.close()

    summary.update(step=step, resumed_from=resumed_from, history=history, finished=step == total)
    if step == total:
        converted = Converted(
            kind=resnet.KIND,
            config=resnet.ResNetConfig(data.attribute_names, cfg.image_size).to_dict(),
            variables=jax.device_get({"params": state.params, "batch_stats": state.batch_stats}),
            manifest={"extra": {"val_accuracy": history[-1].get("val_accuracy") if history else None}},
        )
        summary["weights"] = str(save_converted(cfg.workdir / "resnet50", converted,
                                                converter="magec_jax.train_classifier/1", overwrite=True))
    atomic_write_json(metrics_path, summary)
    return summary


def main() -> None:
    """The command line. Flags are defined only here: config files import :func:`default_config` from this
    module, which ``python -m`` has already loaded once as ``__main__``."""
    config_main(run, __doc__)()


if __name__ == "__main__":
    main()

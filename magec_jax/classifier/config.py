"""The classifier training config: defaults (:func:`default_config`, which ``configs/classifier_*.py`` adapt)
and its typed form (:class:`TrainConfig`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_collections

from magec_jax.errors import ConfigError

GROUPS = ("early", "late", "head")  # stem + layer1 + layer2 | layer3 + layer4 | fc


def default_config() -> ml_collections.ConfigDict:
    """The paper's schedule at 224x224 with placeholder paths; ``configs/classifier_*.py`` adapt it."""
    c = ml_collections.ConfigDict()
    c.images = ""  # folder the table's image names are relative to
    c.attributes = ""  # list_attr_celeba.txt-format table
    c.attribute_names = ""  # comma-separated subset of the table's columns; empty: all
    c.out_dir = ""  # checkpoints/, metrics.json, resnet50/ (final converted weights)
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
    out_dir: Path
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
        for name in ("images", "attributes", "out_dir"):
            if not c[name]:
                raise ConfigError(f"config.{name} must be set (--config.{name}=...)")
        if c.schedule not in ("one_cycle", "constant"):
            raise ConfigError(f"config.schedule must be 'one_cycle' or 'constant', got {c.schedule!r}")
        for name in ("image_size", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "num_workers"):
            if c[name] < 1:
                raise ConfigError(f"config.{name} must be a positive integer, got {c[name]}")
        for name in ("head_epochs", "full_epochs"):
            if c[name] < 0:
                raise ConfigError(f"config.{name} must be a non-negative integer, got {c[name]}")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: c[k] for k in fields}
        values.update(
            images=Path(c.images), attributes=Path(c.attributes), out_dir=Path(c.out_dir),
            init_weights=Path(c.init_weights) if c.init_weights else None,
            attribute_names=tuple(n.strip() for n in c.attribute_names.split(",") if n.strip()),
        )
        return cls(**values)


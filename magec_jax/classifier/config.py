"""The classifier training config: :class:`TrainConfig`, a frozen dataclass whose fields mirror the ConfigDict
that ``configs/classifier_*.py`` edit; :func:`default_config` is its defaults as a ConfigDict, and
``magec_jax.configdicts.from_configdict(TrainConfig, config)`` the checked, typed form the run uses."""

from __future__ import annotations

import dataclasses
from typing import Literal

import ml_collections

from magec_jax.configdicts import to_configdict
from magec_jax.images import FRAMINGS, MAX_IMAGE_PIXELS

GROUPS = ("early", "late", "head")  # stem + layer1 + layer2 | layer3 + layer4 | fc


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The paper's schedule at 224x224 with placeholder paths; ``configs/classifier_*.py`` adapt it."""

    images: str = ""  # folder the table's image names are relative to
    attributes: str = ""  # list_attr_celeba.txt-format table
    attribute_names: str = ""  # comma-separated subset of the table's columns; empty: all
    out_dir: str = ""  # checkpoints/, metrics.json, resnet50/ (final converted weights)
    init_weights: str = ""  # converted resnet50 directory (ImageNet) for every layer but fc; empty: random init
    image_size: int = 224
    # How an image becomes image_size x image_size (magec_jax.images.frame): "square", the centred square;
    # "letterbox", the whole image on black, as a letterboxed generator's data was (the cars).
    framing: str = "square"
    batch_size: int = 64
    val_fraction: float = 0.1
    seed: int = 0
    flip: bool = True  # random horizontal flips
    # Phase 1: the last layer only (body frozen); METHOD.md: 2 epochs at lr 0.02.
    head_epochs: int = 2
    head_lr: float = 0.02
    # Phase 2: all layers, discriminative lrs lr_min (stem..layer2) .. lr_max (fc); the epoch count is ours.
    full_epochs: int = 4
    lr_min: float = 0.002
    lr_max: float = 0.02
    schedule: Literal["one_cycle", "constant"] = "one_cycle"  # per phase
    pct_start: float = 0.25  # one-cycle warm-up fraction
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-5
    weight_decay: float = 0.01  # decoupled (AdamW)
    dtype: str = "float32"  # compute dtype; "bfloat16" on accelerators
    matmul_precision: str = "default"
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    num_workers: int = 8  # image-decoding threads
    max_image_pixels: int = MAX_IMAGE_PIXELS  # larger images are skipped unread (decompression bombs)

    def __post_init__(self):
        for name in ("images", "attributes", "out_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} must be set (--config.{name}=...)")
        for name in ("image_size", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "num_workers",
                     "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, got {self.framing!r}")
        for name in ("head_epochs", "full_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {getattr(self, name)}")

    @property
    def attribute_subset(self) -> tuple[str, ...]:
        """The attributes to train (``attribute_names`` split at commas); empty: every column of the table."""
        return tuple(n.strip() for n in self.attribute_names.split(",") if n.strip())


def default_config() -> ml_collections.ConfigDict:
    """The defaults of :class:`TrainConfig` (its paths unset) as the ConfigDict config files start from."""
    return to_configdict(TrainConfig)

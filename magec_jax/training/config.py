"""The GAN trainer's config: :class:`TrainGANConfig`, a frozen dataclass whose fields mirror the ConfigDict
that config files edit (``configs/lfw_stylegan2.py``, ``--config.g_lr=...``); :func:`default_config` is its
defaults as a ConfigDict, and ``magec_jax.configdicts.from_configdict(TrainGANConfig, config)`` the checked,
typed form the run uses.
"""

from __future__ import annotations

import dataclasses
import functools

import ml_collections

from magec_jax.configdicts import to_configdict
from magec_jax.images import FRAMINGS, MAX_IMAGE_PIXELS
from magec_jax.models.discriminator import DiscriminatorConfig
from magec_jax.models.stylegan2 import StyleGAN2Config
from magec_jax.training.data import DEFAULT_CROP, DEFAULT_HELDOUT_FRACTION, HELDOUT_UNITS
from magec_jax.training.gan import GANSetup


@dataclasses.dataclass(frozen=True)
class GeneratorFields:
    """``config.g``: the generator's architecture (its resolution is ``config.resolution``)."""

    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    channel_base: int = 16384
    channel_max: int = 512


@dataclasses.dataclass(frozen=True)
class DiscriminatorFields:
    """``config.d``: the residual discriminator's architecture (its resolution is ``config.resolution``)."""

    channel_base: int = 16384
    channel_max: int = 512
    mbstd_group_size: int = 4


@dataclasses.dataclass(frozen=True)
class TrainGANConfig:
    """NVIDIA's StyleGAN2 recipe (paper configs) at 64x64 with placeholder paths; ``configs/lfw_stylegan2.py``
    sizes it for a CPU. The networks and optimiser settings the steps compile for are :attr:`setup`."""

    data: str = ""  # tar or folder of <Person>/<image> files
    out_dir: str = ""  # checkpoints/, samples/, generator/, metrics.jsonl, data/ (the decoded-image cache)
    resolution: int = 64
    framing: str = "square"  # "square": the central `crop` box; "letterbox": the whole image on black
    crop: int = DEFAULT_CROP  # central box (px) cut from each source image before resizing ("square" framing)
    max_images: int = 0  # the first N source paths in sorted order (0: all)
    max_image_pixels: int = MAX_IMAGE_PIXELS  # larger source images are skipped unread (decompression bombs)
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION  # of the people, by name hash; never trained on
    heldout_by: str = "folder"  # held out together: "folder" (a person's images) or "file" (each image)
    xflip: bool = True
    seed: int = 0

    g: GeneratorFields = GeneratorFields()
    d: DiscriminatorFields = DiscriminatorFields()

    batch_size: int = 32
    g_lr: float = 0.0025
    d_lr: float = 0.0025
    beta1: float = 0.0
    beta2: float = 0.99
    eps: float = 1e-8
    r1_gamma: float = 1.0
    d_reg_interval: int = 16
    pl_weight: float = 2.0  # 0: no path-length regularisation
    pl_decay: float = 0.01
    pl_batch_shrink: int = 2
    g_reg_interval: int = 4
    style_mixing_prob: float = 0.9
    w_avg_beta: float = 0.995
    ema_kimg: float = 10.0
    ema_rampup: float = 0.0  # 0: none; NVIDIA's 'auto' config uses 0.05

    total_kimg: float = 25000.0
    log_every: int = 50  # iterations between metric fetches (the only host syncs of the loop)
    checkpoint_kimg: float = 10.0  # checkpoint, sample grids and generator export
    keep_checkpoints: int = 3
    sample_seeds: int = 32  # grid of seeds 0..N-1
    metric_kimg: float = 50.0  # 0: no FD figure
    metric_num_images: int = 0  # generated images per FD figure (0: as many as held-out images)
    metric_batch: int = 32
    fast_compile: bool = False  # lower XLA optimisation: faster compiles, slower steps (tests)

    def __post_init__(self):
        for name in ("data", "out_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} must be set (--config.{name}=...)")
        for name in ("total_kimg", "checkpoint_kimg", "log_every", "batch_size", "max_image_pixels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, got {self.framing!r}")
        if self.heldout_by not in HELDOUT_UNITS:
            raise ValueError(f"heldout_by must be one of {', '.join(HELDOUT_UNITS)}, got {self.heldout_by!r}")
        self.setup  # the networks and the batch must fit together (GANSetup's checks)

    @functools.cached_property
    def setup(self) -> GANSetup:
        """What the compiled steps depend on: both architectures at ``resolution`` and the optimiser."""
        g = StyleGAN2Config(
            z_dim=self.g.z_dim, w_dim=self.g.w_dim, img_resolution=self.resolution,
            mapping_layers=self.g.mapping_layers, mapping_lr_multiplier=self.g.mapping_lr_multiplier,
            channel_base=self.g.channel_base, channel_max=self.g.channel_max,
        )
        d = DiscriminatorConfig(
            img_resolution=self.resolution, channel_base=self.d.channel_base, channel_max=self.d.channel_max,
            mbstd_group_size=self.d.mbstd_group_size,
        )
        return GANSetup(
            g=g, d=d, batch_size=self.batch_size, g_lr=self.g_lr, d_lr=self.d_lr, betas=(self.beta1, self.beta2),
            eps=self.eps, r1_gamma=self.r1_gamma, d_reg_interval=self.d_reg_interval, pl_weight=self.pl_weight,
            pl_decay=self.pl_decay, pl_batch_shrink=self.pl_batch_shrink, g_reg_interval=self.g_reg_interval,
            style_mixing_prob=self.style_mixing_prob, w_avg_beta=self.w_avg_beta, ema_kimg=self.ema_kimg,
            ema_rampup=self.ema_rampup or None, xflip=self.xflip,
        )

    @property
    def total_steps(self) -> int:
        """Iterations to reach ``total_kimg``."""
        return -(-round(self.total_kimg * 1000) // self.batch_size)


def default_config() -> ml_collections.ConfigDict:
    """The defaults of :class:`TrainGANConfig` (its paths unset) as the ConfigDict config files start from."""
    return to_configdict(TrainGANConfig)


def networks(config: ml_collections.ConfigDict, *, z_dim: int, mapping_layers: int, channel_base: int,
             channel_max: int) -> None:
    """Sets both networks' sizes on ``config`` (z and w of ``z_dim``; G and D with the same channels)."""
    config.g.z_dim = config.g.w_dim = z_dim
    config.g.mapping_layers = mapping_layers
    config.g.channel_base = config.d.channel_base = channel_base
    config.g.channel_max = config.d.channel_max = channel_max


def small_cpu_run(config: ml_collections.ConfigDict) -> None:
    """The demo generators' CPU recipe (``configs/lfw_stylegan2.py:small``, ``configs/cars_stylegan2.py``): z, w
    128-d, 2 mapping layers, channels min(2048 / R, 128), no path-length regularisation, a checkpoint every
    4 kimg and the FD every 20 kimg."""
    networks(config, z_dim=128, mapping_layers=2, channel_base=2048, channel_max=128)
    config.pl_weight = 0.0
    config.checkpoint_kimg = 4.0
    config.metric_kimg = 20.0


def tiny_run(config: ml_collections.ConfigDict) -> None:
    """A 16x16 run on the first 300 images for tests and smoke runs: 4 iterations of batch 4, a checkpoint
    every 2, the FD on 16 images, fast compilation."""
    config.resolution = 16
    config.max_images = 300
    networks(config, z_dim=32, mapping_layers=2, channel_base=256, channel_max=32)
    config.batch_size = 4
    config.total_kimg = 0.016
    config.log_every = 2
    config.checkpoint_kimg = 0.008
    config.keep_checkpoints = 2
    config.sample_seeds = 8
    config.metric_kimg = 0.016
    config.metric_num_images = 16
    config.metric_batch = 8
    config.fast_compile = True


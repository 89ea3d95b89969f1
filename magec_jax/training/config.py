"""The GAN trainer's config: :func:`default_config` (an ml-collections ConfigDict, what config files edit) and
:class:`TrainGANConfig` (the typed, frozen form the run uses; built once by :meth:`TrainGANConfig.from_config`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_collections

from magec_jax.errors import ConfigError
from magec_jax.models.discriminator import DiscriminatorConfig
from magec_jax.models.stylegan2 import StyleGAN2Config
from magec_jax.training.data import DEFAULT_CROP, DEFAULT_HELDOUT_FRACTION
from magec_jax.training.gan import GANSetup


def default_config() -> ml_collections.ConfigDict:
    """NVIDIA's StyleGAN2 recipe (paper configs) at 64x64 with placeholder paths; ``configs/lfw_stylegan2.py``
    sizes it for a CPU."""
    c = ml_collections.ConfigDict()
    c.data = ""  # tar or folder of <Person>/<image> files
    c.out_dir = ""  # checkpoints/, samples/, generator/, metrics.jsonl, data/ (the decoded-image cache)
    c.resolution = 64
    c.crop = DEFAULT_CROP  # central box (px) cut from each source image before resizing
    c.max_images = 0  # the first N source paths in sorted order (0: all)
    c.heldout_fraction = DEFAULT_HELDOUT_FRACTION  # of the people, by name hash; never trained on
    c.xflip = True
    c.seed = 0

    c.g = ml_collections.ConfigDict()
    c.g.z_dim = 512
    c.g.w_dim = 512
    c.g.mapping_layers = 8
    c.g.mapping_lr_multiplier = 0.01
    c.g.channel_base = 16384
    c.g.channel_max = 512
    c.d = ml_collections.ConfigDict()
    c.d.channel_base = 16384
    c.d.channel_max = 512
    c.d.mbstd_group_size = 4

    c.batch_size = 32
    c.g_lr = 0.0025
    c.d_lr = 0.0025
    c.beta1 = 0.0
    c.beta2 = 0.99
    c.eps = 1e-8
    c.r1_gamma = 1.0
    c.d_reg_interval = 16
    c.pl_weight = 2.0  # 0: no path-length regularisation
    c.pl_decay = 0.01
    c.pl_batch_shrink = 2
    c.g_reg_interval = 4
    c.style_mixing_prob = 0.9
    c.w_avg_beta = 0.995
    c.ema_kimg = 10.0
    c.ema_rampup = 0.0  # 0: none; NVIDIA's 'auto' config uses 0.05

    c.total_kimg = 25000.0
    c.log_every = 50  # iterations between metric fetches (the only host syncs of the loop)
    c.checkpoint_kimg = 10.0  # checkpoint, sample grids and generator export
    c.keep_checkpoints = 3
    c.sample_seeds = 32  # grid of seeds 0..N-1
    c.metric_kimg = 50.0  # 0: no FD figure
    c.metric_num_images = 0  # generated images per FD figure (0: as many as held-out images)
    c.metric_batch = 32
    c.fast_compile = False  # lower XLA optimisation: faster compiles, slower steps (tests)
    return c


@dataclasses.dataclass(frozen=True)
class TrainGANConfig:
    """The typed config (see :func:`default_config` for each field)."""

    data: Path
    out_dir: Path
    resolution: int
    crop: int
    max_images: int | None
    heldout_fraction: float
    seed: int
    setup: GANSetup
    total_kimg: float
    log_every: int
    checkpoint_kimg: float
    keep_checkpoints: int
    sample_seeds: int
    metric_kimg: float
    metric_num_images: int
    metric_batch: int
    fast_compile: bool

    @classmethod
    def from_config(cls, c: ml_collections.ConfigDict) -> TrainGANConfig:
        """Checks and converts a ConfigDict."""
        for name in ("data", "out_dir"):
            if not c[name]:
                raise ConfigError(f"config.{name} must be set (--config.{name}=...)")
        for name in ("total_kimg", "checkpoint_kimg", "log_every", "batch_size"):
            if c[name] <= 0:
                raise ConfigError(f"config.{name} must be positive, got {c[name]}")
        g = StyleGAN2Config(
            z_dim=c.g.z_dim, w_dim=c.g.w_dim, img_resolution=c.resolution, mapping_layers=c.g.mapping_layers,
            mapping_lr_multiplier=c.g.mapping_lr_multiplier, channel_base=c.g.channel_base,
            channel_max=c.g.channel_max,
        )
        d = DiscriminatorConfig(
            img_resolution=c.resolution, channel_base=c.d.channel_base, channel_max=c.d.channel_max,
            mbstd_group_size=c.d.mbstd_group_size,
        )
        setup = GANSetup(
            g=g, d=d, batch_size=c.batch_size, g_lr=c.g_lr, d_lr=c.d_lr, betas=(c.beta1, c.beta2), eps=c.eps,
            r1_gamma=c.r1_gamma, d_reg_interval=c.d_reg_interval, pl_weight=c.pl_weight, pl_decay=c.pl_decay,
            pl_batch_shrink=c.pl_batch_shrink, g_reg_interval=c.g_reg_interval,
            style_mixing_prob=c.style_mixing_prob, w_avg_beta=c.w_avg_beta, ema_kimg=c.ema_kimg,
            ema_rampup=c.ema_rampup or None, xflip=c.xflip,
        )
        return cls(
            data=Path(c.data), out_dir=Path(c.out_dir), resolution=c.resolution, crop=c.crop,
            max_images=c.max_images or None, heldout_fraction=c.heldout_fraction, seed=c.seed, setup=setup,
            total_kimg=c.total_kimg, log_every=c.log_every, checkpoint_kimg=c.checkpoint_kimg,
            keep_checkpoints=c.keep_checkpoints, sample_seeds=c.sample_seeds, metric_kimg=c.metric_kimg,
            metric_num_images=c.metric_num_images, metric_batch=c.metric_batch, fast_compile=c.fast_compile,
        )

    @property
    def total_steps(self) -> int:
        """Iterations to reach ``total_kimg``."""
        return -(-round(self.total_kimg * 1000) // self.setup.batch_size)

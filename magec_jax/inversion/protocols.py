"""The paper's inversion protocols as ml-collections configs (METHOD.md), defined once.

``configs/*.py`` call :func:`job_config` and fill in paths; every field can be overridden from the command
line (``--config.inversion.magec_alpha=2``).

| protocol      | steps           | loss                                        |
| ------------- | --------------- | ------------------------------------------- |
| ``magec``     | 100 + 100       | MSE + LPIPS + ID + MAGEC (paper's weights)  |
| ``wo_magec``  | 100 + 100       | the same with l_magec = 0                   |
| ``wo_magec300`` | 150 + 150     | the same, 300 steps                         |
| ``i2spp``     | 1000 w+ + 1000 noise | MSE + LPIPS (Image2StyleGAN++ baseline) |
"""

from __future__ import annotations

import ml_collections

PHASE1 = dict(mse=1e-3, lpips=0.5, id=3e-4, magec=3e-4)
PHASE2 = dict(mse=0.5, lpips=0.5, id=3e-4, magec=3e-4)


def _phases(protocol: str, steps_scale: float = 1.0) -> tuple[dict, ...]:
    def scaled(n: int) -> int:
        return max(1, round(n * steps_scale))

    if protocol == "magec":
        return (dict(steps=scaled(100), **PHASE1), dict(steps=scaled(100), **PHASE2))
    if protocol in ("wo_magec", "wo_magec300"):
        n = 150 if protocol == "wo_magec300" else 100
        return (dict(steps=scaled(n), **PHASE1 | {"magec": 0.0}), dict(steps=scaled(n), **PHASE2 | {"magec": 0.0}))
    if protocol == "i2spp":
        return (dict(steps=scaled(1000), mse=1.0, lpips=1.0, id=0.0, magec=0.0),)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


PROTOCOLS = ("magec", "wo_magec", "wo_magec300", "i2spp")


def inversion_config(protocol: str = "magec", *, steps_scale: float = 1.0) -> ml_collections.ConfigDict:
    """The ``inversion`` block of a job config for a protocol (``steps_scale`` shortens every phase)."""
    inv = ml_collections.ConfigDict()
    inv.protocol = protocol
    inv.phases = _phases(protocol, steps_scale)
    inv.lr = 0.07
    inv.lr_decay = 0.8
    inv.lr_decay_every = max(1, round(25 * steps_scale))
    inv.adam_b1 = 0.9
    inv.adam_b2 = 0.999
    inv.adam_eps = 1e-8
    inv.latent_space = "w+"
    inv.magec_alpha = 3.0
    inv.magec_mode = "flip"
    inv.noise_steps = max(1, round(1000 * steps_scale)) if protocol == "i2spp" else 0
    inv.noise_lr = 0.07
    inv.chunk_steps = max(1, round(25 * steps_scale))
    return inv


def job_config(protocol: str = "magec", *, steps_scale: float = 1.0) -> ml_collections.ConfigDict:
    """A whole inversion job config with placeholder paths (``bundle``, ``images``, ``out_dir``)."""
    config = ml_collections.ConfigDict()
    config.name = protocol
    config.bundle = ""
    config.images = ""
    config.out_dir = ""
    config.batch_size = 8
    config.min_size = ml_collections.FieldReference(None, field_type=int)
    config.matmul_precision = "highest"
    config.inversion = inversion_config(protocol, steps_scale=steps_scale)
    config.edit_grid = ml_collections.ConfigDict(dict(attributes=(), strengths=()))  # empty: no edit stage
    config.distributed = ml_collections.ConfigDict(
        dict(coordinator_address="", num_processes=1, process_id=0, cpu_collectives="gloo")
    )
    return config

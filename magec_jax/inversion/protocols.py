"""The paper's inversion protocols as ml-collections configs (METHOD.md), defined once.

``configs/*.py`` call :func:`job_config` and fill in paths; every field can be overridden from the command
line (``--config.inversion.magec_alpha=2``).

| protocol      | steps           | loss                                        |
| ------------- | --------------- | ------------------------------------------- |
| ``magec``     | 100 + 100       | MSE + LPIPS + ID + MAGEC (paper's weights)  |
| ``wo_magec``  | 100 + 100       | the same with l_magec = 0                   |
| ``wo_magec300`` | 150 + 150     | the same, 300 steps                         |
| ``i2spp``     | 1000 w+ + 1000 noise | MSE + LPIPS (Image2StyleGAN++ baseline) |

The config stores the protocol's own step counts; the field ``steps_scale`` (default 1) shortens or lengthens
a run in one place: ``--config.steps_scale=0.1`` runs every protocol at a tenth of its length. It multiplies
every step count of the ``inversion`` block (each phase, the noise stage, the learning-rate decay interval and
the progress interval; each rounded, at least 1) when the config becomes typed settings
(:func:`scale_steps`), so the settings a result records are the steps actually run.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from magec_jax.inversion.engine import ComputeOptions, InversionSettings

PHASE1 = dict(mse=1e-3, lpips=0.5, id=3e-4, magec=3e-4)
PHASE2 = dict(mse=0.5, lpips=0.5, id=3e-4, magec=3e-4)
PROTOCOLS = ("magec", "wo_magec", "wo_magec300", "i2spp")
ON_MISMATCH = ("refuse", "recompute")


def _phases(protocol: str) -> tuple[dict, ...]:
    if protocol == "magec":
        return (dict(steps=100, **PHASE1), dict(steps=100, **PHASE2))
    if protocol in ("wo_magec", "wo_magec300"):
        n = 150 if protocol == "wo_magec300" else 100
        return (dict(steps=n, **PHASE1 | {"magec": 0.0}), dict(steps=n, **PHASE2 | {"magec": 0.0}))
    if protocol == "i2spp":
        return (dict(steps=1000, mse=1.0, lpips=1.0, id=0.0, magec=0.0),)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


def inversion_config(protocol: str = "magec") -> ml_collections.ConfigDict:
    """The ``inversion`` block of a job config for a protocol, at the protocol's own length."""
    inv = ml_collections.ConfigDict()
    inv.protocol = protocol
    inv.phases = _phases(protocol)
    inv.lr = 0.07
    inv.lr_decay = 0.8
    inv.lr_decay_every = 25
    inv.adam_b1 = 0.9
    inv.adam_b2 = 0.999
    inv.adam_eps = 1e-8
    inv.latent_space = "w+"
    inv.magec_alpha = 3.0
    inv.magec_mode = "flip"
    inv.noise_steps = 1000 if protocol == "i2spp" else 0
    inv.noise_lr = 0.07
    inv.chunk_steps = 25
    # How the step is computed (engine.ComputeOptions): "auto" picks each platform's measured choice.
    inv.compute = ml_collections.ConfigDict(dataclasses.asdict(ComputeOptions()))
    return inv


def job_config(protocol: str = "magec", *, steps_scale: float = 1.0) -> ml_collections.ConfigDict:
    """A whole inversion job config with placeholder paths (``bundle``, ``images``, ``out_dir``).

    ``steps_scale`` sets the config's field of that name (see the module docstring). ``on_mismatch`` says what
    the job does with results computed under another fingerprint (settings, bundle, preprocessing or input
    file): ``refuse`` (the default: stop with one line naming the differences) or ``recompute`` them.
    ``align`` makes every face of every photograph an item of its own (``magec_jax.inversion.job``).
    """
    config = ml_collections.ConfigDict()
    config.name = protocol
    config.bundle = ""
    config.images = ""
    config.out_dir = ""
    config.batch_size = 8
    config.steps_scale = float(steps_scale)
    config.on_mismatch = "refuse"
    config.min_size = ml_collections.FieldReference(None, field_type=int)
    config.align = False  # True: find the faces of each photograph, align them to the bundle's framing, paste back
    config.matmul_precision = "highest"
    config.inversion = inversion_config(protocol)
    config.edit_grid = ml_collections.ConfigDict(dict(attributes=(), strengths=()))  # empty: no edit stage
    config.distributed = ml_collections.ConfigDict(
        dict(coordinator_address="", num_processes=1, process_id=0, cpu_collectives="gloo")
    )
    return config


def scale_steps(settings: InversionSettings, scale: float) -> InversionSettings:
    """``settings`` with every step count multiplied by ``scale`` (rounded, at least 1 step each)."""
    if scale == 1.0:
        return settings

    def scaled(n: int) -> int:
        return max(1, round(n * scale))

    noise = settings.noise_phase
    return dataclasses.replace(
        settings,
        phases=tuple(dataclasses.replace(p, steps=scaled(p.steps)) for p in settings.phases),
        noise_phase=None if noise is None else dataclasses.replace(noise, steps=scaled(noise.steps)),
        lr_decay_every=scaled(settings.lr_decay_every),
        chunk_steps=scaled(settings.chunk_steps),
    )

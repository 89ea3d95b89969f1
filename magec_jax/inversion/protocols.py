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

from magec_jax.configdicts import to_configdict
from magec_jax.images import MAX_IMAGE_PIXELS
from magec_jax.inversion.pti import PTIConfig
from magec_jax.inversion.settings import PAPER_PHASE1, PAPER_PHASE2, InversionSettings, NoisePhase, Phase

PROTOCOLS = ("magec", "wo_magec", "wo_magec300", "i2spp")


def _phases(protocol: str) -> tuple[Phase, ...]:
    if protocol == "magec":
        return (Phase(100, PAPER_PHASE1), Phase(100, PAPER_PHASE2))
    if protocol in ("wo_magec", "wo_magec300"):
        n = 150 if protocol == "wo_magec300" else 100
        return (Phase(n, PAPER_PHASE1 | {"magec": 0.0}), Phase(n, PAPER_PHASE2 | {"magec": 0.0}))
    if protocol == "i2spp":
        return (Phase(1000, mse=1.0, lpips=1.0, id=0.0, magec=0.0),)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


def protocol_settings(protocol: str = "magec", *, steps_scale: float = 1.0) -> InversionSettings:
    """A paper protocol as the engine's typed settings: the one place its values are written.

    Everything but the phases (and the Image2StyleGAN++ noise stage) is :class:`InversionSettings`' default,
    which is METHOD.md's. ``steps_scale`` shortens or lengthens the run (:func:`scale_steps`).
    """
    noise = NoisePhase(1000, lr=0.07) if protocol == "i2spp" else None
    return scale_steps(InversionSettings(phases=_phases(protocol), noise_phase=noise), steps_scale)


def inversion_config(protocol: str = "magec") -> ml_collections.ConfigDict:
    """The ``inversion`` block of a job config for a protocol, at the protocol's own length: the fields of
    :func:`protocol_settings` (phases as dicts of steps and weights by term name), for command-line overrides."""
    settings = protocol_settings(protocol)
    inv = ml_collections.ConfigDict()
    inv.protocol = protocol
    inv.phases = tuple(dict(steps=p.steps, **dict(p.weights)) for p in settings.phases)
    for field in ("lr", "lr_decay", "lr_decay_every", "adam_b1", "adam_b2", "adam_eps", "latent_space",
                  "magec_alpha", "magec_mode", "chunk_steps"):
        inv[field] = getattr(settings, field)
    noise = settings.noise_phase
    inv.noise_steps = 0 if noise is None else noise.steps
    inv.noise_lr = NoisePhase(1).lr if noise is None else noise.lr
    # How the step is computed (engine.ComputeOptions): "auto" picks each platform's measured choice.
    inv.compute = ml_collections.ConfigDict(dataclasses.asdict(settings.compute))
    return inv


def job_config(protocol: str = "magec", *, steps_scale: float = 1.0) -> ml_collections.ConfigDict:
    """A whole inversion job config with placeholder paths (``bundle``, ``images``, ``out_dir``).

    ``steps_scale`` sets the config's field of that name (see the module docstring). ``on_mismatch`` says what
    the job does with results computed under another fingerprint (settings, bundle, preprocessing or input
    file): ``refuse`` (the default: stop with one line naming the differences) or ``recompute`` them.
    ``align`` makes every face of every photograph an item of its own (``magec_jax.inversion.job``); other
    inputs are framed as ``framing`` says (``""``: as the bundle's generator data was, ``Bundle.image_framing``),
    and with letterbox framing ``mask_bands`` restricts the losses to each image's content area. ``pti``
(``enabled`` False) is the pivotal-tuning stage after the inversion (``magec_jax.inversion.pti_job``).
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
    config.max_image_pixels = MAX_IMAGE_PIXELS  # larger images are refused before decoding (bombs); see images.py
    config.align = False  # True: find the faces of each photograph, align them to the bundle's framing, paste back
    config.framing = ""  # how other inputs are framed: "" the bundle's (square, or letterbox for e.g. cars)
    config.mask_bands = True  # letterboxed inputs: the losses see only the content area, not the black bands
    config.matmul_precision = "highest"
    config.inversion = inversion_config(protocol)
    config.edit_grid = ml_collections.ConfigDict(dict(attributes=(), strengths=()))  # empty: no edit stage
    config.pti = to_configdict(PTIConfig())  # pivotal tuning after the inversion (off; docs/pti.md)
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

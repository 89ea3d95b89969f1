"""The typed form of an evaluation config (``configs/eval_*.py``): :class:`EvalConfig`, whose fields mirror the
ConfigDict, built once by ``magec_jax.configdicts.from_configdict(EvalConfig, config)``.

Config fields::

    name, bundle, images, out_dir     run name, model bundle, images (folder or list file), output folder
    num_images                        evaluate the first N images in sorted order (0: all)
    max_image_pixels                  images larger than this (width x height) are refused unread, also by
                                      every method's jobs (default: Pillow's bomb warning threshold)
    batch_size                        images per compiled render / LPIPS / F / feature call
    ganspace                          GANSpace PCA file ("" : the bundle's ``ganspace`` entry, if any)
    methods.<name>                    an inversion job config (``protocols.job_config``) plus ``label`` and
                                      ``pivots``; its bundle / images / out_dir / max_image_pixels are set
                                      by the evaluation. With ``pti.enabled`` the method is a tuned one:
                                      pivotal tuning of its pivots, its edits rendered by each image's tuned
                                      generator (no re-projection: ECS is undefined, see pipeline). pivots:
                                      another method whose inversions it tunes instead of inverting itself
                                      (so that tunings and the untuned method share pivots; "" : its own).
                                      ecs: False skips the re-projection of its edits (about half of an
                                      untuned method's time): no ECS and no latent cycle for it
    method_order                      the methods to run, in table order; the first is the reference of the
                                      paired t-tests
    edits.<name>                      kind "interfacegan": attribute, strength, target
                                      kind "styleflow": attribute (a context value of the bundle's prior),
                                      strength (its training standard deviations), target
                                      kind "ganspace": component, layers (start, end; end exclusive),
                                      strength, target
                                      target: F's attribute the edit adds; ECS, t and realism are scored on
                                      the images lacking it ("" : no target, every image, no t)
    edit_order                        the edits to run, in column order
    realism.k, realism.clamp_percentile (negative: no pruning), realism.reference_images ("" : the
    evaluated images), realism.vgg16_weights ("" : the substitute feature, see
    ``magec_jax.evaluation.features``)
    figures.num_images, figures.num_extremes, significance

Every method's job config and every edit is checked when the config is read, also those the orders leave out.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Literal

from magec_jax.configdicts import from_configdict
from magec_jax.editing.render import Edit
from magec_jax.errors import ConfigError
from magec_jax.images import MAX_IMAGE_PIXELS
from magec_jax.inversion.job import JobConfig

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]|_(?!_))*")


@dataclasses.dataclass(frozen=True)
class EditFields:
    """``edits.<name>``: a latent edit and the attribute it adds (``target``, "" none)."""

    kind: Literal["interfacegan", "ganspace", "styleflow"]
    strength: float
    attribute: str = ""  # interfacegan: the bundle's direction; styleflow: the prior's context value
    component: int = 0  # ganspace: the principal component
    layers: tuple[int, int] | None = None  # ganspace: (start, end), end exclusive
    target: str = ""

    def __post_init__(self):
        if self.kind in ("interfacegan", "styleflow") and not self.attribute:
            raise ValueError(f"a {self.kind} edit needs an attribute")
        if self.kind == "ganspace" and self.layers is None:
            raise ValueError("layers must be (start, end) for a ganspace edit")

    @property
    def edit(self) -> Edit:
        """The latent edit (only the fields of its kind)."""
        if self.kind in ("interfacegan", "styleflow"):
            return Edit(self.kind, self.strength, attribute=self.attribute)
        return Edit("ganspace", self.strength, component=self.component, layers=self.layers)


@dataclasses.dataclass(frozen=True)
class EditSpec:
    """One evaluated edit: its name (a column), the latent edit, and the attribute it adds ("" none)."""

    name: str
    edit: Edit
    target: str


@dataclasses.dataclass(frozen=True)
class MethodFields:
    """``methods.<name>``: an inversion job config, its table label ("" : the method's name) and the method whose
    pivots it tunes ("" : its own), side by side in one block."""

    job: JobConfig
    label: str = ""
    pivots: str = ""
    ecs: bool = True

    @classmethod
    def from_config_value(cls, value: Any, where: str) -> MethodFields:
        """The block read as the job config's fields plus ``label`` (the ``magec_jax.configdicts`` hook)."""
        if not hasattr(value, "keys"):
            raise ConfigError(f"{where} must be an inversion job config plus a label, got {value!r}")
        extra: dict[str, Any] = {}
        for key, default in (("label", ""), ("pivots", ""), ("ecs", True)):
            extra[key] = value[key] if key in value.keys() else default
            if type(extra[key]) is not type(default):
                raise ConfigError(f"{where}.{key} must be a {type(default).__name__}, got {extra[key]!r}")
        job = {key: value[key] for key in value.keys() if key not in extra}
        return cls(job=from_configdict(JobConfig, job, where=where), **extra)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One inversion method: its name (an output folder), table label, inversion job config (whose bundle,
    images and out_dir the evaluation sets) and the method whose inversions are its pivots (itself unless
    ``pivots`` names another)."""

    name: str
    label: str
    job: JobConfig
    pivots: str
    ecs: bool = True

    @property
    def tuned(self) -> bool:
        """Whether the method tunes the generator per image (``job.pti.enabled``)."""
        return self.job.pti.enabled

    @property
    def reprojects(self) -> bool:
        """Whether its edits are re-projected (for ECS and the latent cycle): asked for, and not tuned."""
        return self.ecs and not self.tuned


@dataclasses.dataclass(frozen=True)
class RealismSettings:
    """k-NN realism: neighbourhood, radius pruning percentile (None, or negative in a config: no pruning),
    references, features."""

    k: int = 3
    clamp_percentile: float | None = 50.0
    reference_images: str = ""
    vgg16_weights: str = ""

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be positive, got {self.k}")
        if self.clamp_percentile is not None and self.clamp_percentile < 0:
            object.__setattr__(self, "clamp_percentile", None)


@dataclasses.dataclass(frozen=True)
class FigureSettings:
    """Images in the method-by-edit grid (Fig. 3) and best/worst rows per ECS figure (Fig. 4b)."""

    num_images: int = 4
    num_extremes: int = 2


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Everything an evaluation run needs, checked; the methods and edits to run, in order, are
    :attr:`method_specs` and :attr:`edit_specs`."""

    name: str = ""
    bundle: str = ""
    images: str = ""
    out_dir: str = ""
    num_images: int = 0
    max_image_pixels: int = MAX_IMAGE_PIXELS
    batch_size: int = 8
    ganspace: str = ""
    methods: dict[str, MethodFields] = dataclasses.field(default_factory=dict)
    method_order: tuple[str, ...] = ()
    edits: dict[str, EditFields] = dataclasses.field(default_factory=dict)
    edit_order: tuple[str, ...] = ()
    realism: RealismSettings = RealismSettings()
    figures: FigureSettings = FigureSettings()
    significance: float = 0.05

    def __post_init__(self):
        for field in ("bundle", "images", "out_dir"):
            if not getattr(self, field):
                raise ValueError(f"the evaluation sets no {field} (--config.{field}=...)")
        for order, blocks, what in ((self.method_order, self.methods, "method"), (self.edit_order, self.edits, "edit")):
            for name in order:
                if name not in blocks:
                    raise ValueError(f"{what}_order names {name!r}, which is not in {what}s ({', '.join(blocks)})")
                if not _NAME.fullmatch(name):
                    raise ValueError(f"{what} name {name!r}: use letters, digits, '-' and single '_' (it names files)")
        if not self.method_order:
            raise ValueError("method_order is empty: nothing to evaluate")
        if len(set(self.method_order)) != len(self.method_order) or len(set(self.edit_order)) != len(self.edit_order):
            raise ValueError("method_order and edit_order must not repeat a name")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.num_images < 0:
            raise ValueError(f"num_images must be non-negative, got {self.num_images}")
        if self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be a positive integer, got {self.max_image_pixels}")
        for name, fields in self.methods.items():
            if not fields.pivots:
                continue
            source = self.methods.get(fields.pivots)
            if source is None or fields.pivots == name:
                raise ValueError(f"methods.{name}.pivots names {fields.pivots!r}, which is not another method "
                                 f"({', '.join(m for m in self.methods if m != name)})")
            if source.pivots:
                raise ValueError(f"methods.{name}.pivots names {fields.pivots!r}, whose own pivots come from "
                                 f"{source.pivots!r}: name the method that inverts")
            if not fields.job.pti.enabled:
                raise ValueError(f"methods.{name} takes the pivots of {fields.pivots!r} but does not tune them "
                                 "(pti.enabled is False): it would be that method again")

    @functools.cached_property
    def method_specs(self) -> tuple[MethodSpec, ...]:
        """The methods to run, in table order (the first is the reference of the paired t-tests)."""
        return tuple(self.method(name) for name in self.method_order)

    def method(self, name: str) -> MethodSpec:
        """Any method of ``methods`` (also one the order leaves out, e.g. another method's pivots)."""
        fields = self.methods[name]
        return MethodSpec(name, fields.label or name, fields.job, fields.pivots or name, fields.ecs)

    @functools.cached_property
    def edit_specs(self) -> tuple[EditSpec, ...]:
        """The edits to run, in column order."""
        return tuple(EditSpec(name, self.edits[name].edit, self.edits[name].target) for name in self.edit_order)

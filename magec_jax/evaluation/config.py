"""The typed form of an evaluation config (``configs/eval_*.py``), built once from the ConfigDict.

Config fields::

    name, bundle, images, out_dir     run name, model bundle, images (folder or list file), output folder
    num_images                        evaluate the first N images in sorted order (0: all)
    batch_size                        images per compiled render / LPIPS / F / feature call
    ganspace                          GANSpace PCA file ("" : the bundle's ``ganspace`` entry, if any)
    methods.<name>                    an inversion job config (``protocols.job_config``) plus ``label``;
                                      its bundle / images / out_dir are set by the evaluation
    method_order                      the methods to run, in table order; the first is the reference of the
                                      paired t-tests
    edits.<name>                      kind "interfacegan": attribute, strength, target
                                      kind "ganspace": component, layers (start, end; end exclusive),
                                      strength, target
                                      target: F's attribute the edit adds; ECS, t and realism are scored on
                                      the images lacking it ("" : no target, every image, no t)
    edit_order                        the edits to run, in column order
    realism.k, realism.clamp_percentile (negative: no pruning), realism.reference_images ("" : the
    evaluated images), realism.vgg16_weights ("" : the substitute feature, see
    ``magec_jax.evaluation.features``)
    figures.num_images, figures.num_extremes, significance
"""

from __future__ import annotations

import dataclasses
import re

import ml_collections

from magec_jax.editing.render import Edit
from magec_jax.errors import ConfigError, MagecError
from magec_jax.inversion.job import JobConfig

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]|_(?!_))*")


@dataclasses.dataclass(frozen=True)
class EditSpec:
    """One evaluated edit: its name (a column), the latent edit, and the attribute it adds ("" none)."""

    name: str
    edit: Edit
    target: str


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One inversion method: its name (an output folder), table label and inversion job config."""

    name: str
    label: str
    job: ml_collections.ConfigDict


@dataclasses.dataclass(frozen=True)
class RealismSettings:
    """k-NN realism: neighbourhood, radius pruning percentile (None: no pruning), references, features."""

    k: int = 3
    clamp_percentile: float | None = 50.0
    reference_images: str = ""
    vgg16_weights: str = ""


@dataclasses.dataclass(frozen=True)
class FigureSettings:
    """Images in the method-by-edit grid (Fig. 3) and best/worst rows per ECS figure (Fig. 4b)."""

    num_images: int = 4
    num_extremes: int = 2


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Everything an evaluation run needs, checked."""

    name: str
    bundle: str
    images: str
    out_dir: str
    num_images: int
    batch_size: int
    ganspace: str
    methods: tuple[MethodSpec, ...]
    edits: tuple[EditSpec, ...]
    realism: RealismSettings
    figures: FigureSettings
    significance: float

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "EvalConfig":
        for field in ("bundle", "images", "out_dir"):
            if not config.get(field):
                raise MagecError(f"the evaluation config sets no {field} (--config.{field}=...)")
        methods = []
        for name in config.method_order:
            if name not in config.methods:
                raise MagecError(f"method_order names {name!r}, which is not in methods ({', '.join(config.methods)})")
            _check_name(name, "method")
            job = ml_collections.ConfigDict(config.methods[name].to_dict())
            try:  # a bad value of a method is reported before anything runs
                JobConfig.from_config(job)
            except ConfigError as e:
                raise ConfigError(str(e).replace("config.", f"config.methods.{name}.", 1)) from None
            methods.append(MethodSpec(name=name, label=str(job.get("label", name)), job=job))
        edits = []
        for name in config.edit_order:
            if name not in config.edits:
                raise MagecError(f"edit_order names {name!r}, which is not in edits ({', '.join(config.edits)})")
            _check_name(name, "edit")
            edits.append(_edit_spec(name, config.edits[name]))
        if not methods:
            raise MagecError("method_order is empty: nothing to evaluate")
        if len(set(config.method_order)) != len(methods) or len(set(config.edit_order)) != len(edits):
            raise MagecError("method_order and edit_order must not repeat a name")
        realism = config.get("realism", ml_collections.ConfigDict())
        clamp = realism.get("clamp_percentile", 50.0)
        figures = config.get("figures", ml_collections.ConfigDict())
        out = cls(
            name=str(config.get("name", "")),
            bundle=str(config.bundle),
            images=str(config.images),
            out_dir=str(config.out_dir),
            num_images=int(config.get("num_images", 0)),
            batch_size=int(config.get("batch_size", 8)),
            ganspace=str(config.get("ganspace", "")),
            methods=tuple(methods),
            edits=tuple(edits),
            realism=RealismSettings(
                k=int(realism.get("k", 3)),
                clamp_percentile=None if clamp is None or clamp < 0 else float(clamp),
                reference_images=str(realism.get("reference_images", "")),
                vgg16_weights=str(realism.get("vgg16_weights", "")),
            ),
            figures=FigureSettings(int(figures.get("num_images", 4)), int(figures.get("num_extremes", 2))),
            significance=float(config.get("significance", 0.05)),
        )
        if out.batch_size < 1 or out.num_images < 0 or out.realism.k < 1:
            raise MagecError("batch_size and realism.k must be positive and num_images non-negative")
        return out


def _check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise MagecError(f"{what} name {name!r}: use letters, digits, '-' and single '_' (it names files)")


def _edit_spec(name: str, spec: ml_collections.ConfigDict) -> EditSpec:
    kind = spec.get("kind", "")
    if kind == "interfacegan":
        if not spec.get("attribute"):
            raise MagecError(f"edit {name!r}: an interfacegan edit needs an attribute")
        edit = Edit("interfacegan", float(spec.strength), attribute=str(spec.attribute))
    elif kind == "ganspace":
        layers = tuple(int(v) for v in spec.layers)
        if len(layers) != 2:
            raise MagecError(f"edit {name!r}: layers must be (start, end), got {spec.layers}")
        edit = Edit("ganspace", float(spec.strength), component=int(spec.component), layers=layers)
    else:
        raise MagecError(f"edit {name!r}: kind must be 'interfacegan' or 'ganspace', got {kind!r}")
    return EditSpec(name=name, edit=edit, target=str(spec.get("target", "")))

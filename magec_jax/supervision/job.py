"""The supervision job behind ``python -m magec_jax.linknet``: fits a bundle's LinkNet, boundaries and GANSpace.

Stages (``config.fit``: ``linknet``, ``boundaries``, ``both`` or ``none``; ``config.ganspace.enabled``):

  * **linknet**: ``sampling.num_samples`` per-layer-mixed samples (:mod:`.samples`), labelled with F's
    binarised outputs, train the linear LinkNet (:mod:`.train`; plain or class-balanced loss); saved as
    ``BUNDLE/linknet`` (converted format, kind ``linknet``, ``extra``: plain and balanced accuracies, label
    rates, N, epochs, seed, loss history) and named in the manifest.
  * **boundaries**: ``boundaries.num_samples`` single-w samples; per attribute of F, InterFaceGAN's SVM on the top and bottom
    ``ratio`` by F's score (bce: the logit; softmax_ce: the class log-odds), unit normal ``[w_dim]``. Written
    into ``BUNDLE/directions.npz`` (other directions already there are kept) and named in the manifest; the
    fit report goes to ``BUNDLE/directions_fit.json``.
  * **ganspace**: PCA of N mapped w, saved as ``BUNDLE/ganspace.npz`` and named in the manifest as
    ``ganspace``.

Random streams: ``jax.random.key(config.seed)`` split once into ``mixed``, ``single``, ``linknet`` and
``ganspace``. Every file is written atomically; rendered samples are cached per shard (see :mod:`.samples`),
so a rerun, or a run that was stopped, renders only what is missing.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from magec_jax import images as imio
from magec_jax.bundle import Bundle, label_source, load_bundle, update_manifest
from magec_jax.configdicts import from_configdict, to_configdict
from magec_jax.editing.directions import fit_boundary, fit_ganspace, save_ganspace
from magec_jax.errors import MagecError
from magec_jax.inversion.magec_loss import binarize
from magec_jax.logs import Log, to_stderr
from magec_jax.models.interfaces import Descriptor, LossKind
from magec_jax.models.linknet import LinkNetConfig
from magec_jax.supervision.samples import (SampleSettings, Samples, fingerprint, load_or_render, mapped_ws,
                                           weight_hashes)
from magec_jax.supervision.train import TrainSettings, train_linknet
from magec_jax.weights import Converted, save_converted

STREAMS = ("mixed", "single", "linknet", "ganspace")


@dataclasses.dataclass(frozen=True)
class BoundarySettings:
    """InterFaceGAN's recipe: top/bottom ``ratio`` of ``num_samples`` single-w samples, ``val_fraction`` held
    out, SVM ``C``."""

    num_samples: int = 50_000
    ratio: float = 0.02
    val_fraction: float = 0.3
    svm_c: float = 1.0


@dataclasses.dataclass(frozen=True)
class GanSpaceSettings:
    """PCA of ``num_samples`` mapped w (mapping only, ``batch_size`` per call)."""

    enabled: bool = False
    num_samples: int = 100_000
    num_components: int = 80
    batch_size: int = 4096


@dataclasses.dataclass(frozen=True)
class SupervisionConfig:
    """A ``configs/linknet_*.py`` config, typed: the paper's settings (N = 50,000 samples for LinkNet and for
    the boundaries, 10 epochs, Adam lr 1e-3, the plain loss) and an empty bundle path."""

    bundle: str = ""
    fit: Literal["linknet", "boundaries", "both", "none"] = "both"
    seed: int = 0
    cache_dir: str = ""  # empty: BUNDLE/supervision
    matmul_precision: str = "highest"
    sampling: SampleSettings = SampleSettings(num_samples=50_000, batch_size=16, shard_size=5_000)
    linknet: TrainSettings = TrainSettings()
    boundaries: BoundarySettings = BoundarySettings()
    ganspace: GanSpaceSettings = GanSpaceSettings()

    def __post_init__(self):
        positive = {
            "sampling.num_samples": self.sampling.num_samples, "sampling.batch_size": self.sampling.batch_size,
            "sampling.shard_size": self.sampling.shard_size, "linknet.epochs": self.linknet.epochs,
            "linknet.batch_size": self.linknet.batch_size, "boundaries.num_samples": self.boundaries.num_samples,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


def default_config() -> ml_collections.ConfigDict:
    """The defaults of :class:`SupervisionConfig` as the ConfigDict the config files start from."""
    return to_configdict(SupervisionConfig)



def streams_of(job: SupervisionConfig) -> dict[str, jax.Array]:
    """The job's named random streams: ``jax.random.key(seed)`` split once into ``STREAMS``."""
    return dict(zip(STREAMS, jax.random.split(jax.random.key(job.seed), len(STREAMS))))


def load_samples(bundle: Bundle, job: SupervisionConfig, variant: str, *, log: Log = to_stderr) -> Samples:
    """The job's samples of one variant (``mixed``: ``sampling.num_samples``; ``single``:
    ``boundaries.num_samples``), labelled by the bundle's F, from the cache where rendered before."""
    descriptor = bundle.descriptor()
    if descriptor is None:
        raise MagecError(f"{bundle.path}: the bundle has no descriptor F to label samples with; add one "
                         "(python -m magec_jax.bundle --face-descriptor or --resnet-descriptor)")
    cfg, gen_variables = bundle.generator
    if cfg.c_dim:
        raise MagecError(f"{bundle.path}: conditional generators (c_dim={cfg.c_dim}) are not supported")
    labels = label_source(bundle, descriptor)
    settings = job.sampling if variant == "mixed" else dataclasses.replace(
        job.sampling, num_samples=job.boundaries.num_samples)
    with jax.default_matmul_precision(job.matmul_precision):  # also when called on its own
        return load_or_render(
            variant, settings, cfg=cfg, gen_variables=gen_variables, labels=labels, w_avg_D=bundle.w_avg(),
            key=streams_of(job)[variant], cache_root=Path(job.cache_dir) if job.cache_dir else bundle.path / "supervision",
            cache_key=fingerprint(variant, settings, job.seed, weight_hashes(bundle.path, bundle.manifest), labels),
            log=log,
        )


def run(config: ml_collections.ConfigDict, *, log: Log = to_stderr) -> dict[str, Any]:
    """Runs the stages ``config`` selects on its bundle; returns a summary.

    The summary has ``rendered`` (variant -> samples rendered by THIS run; 0 when all came from the cache)
    and one entry per stage run (``linknet``, ``boundaries``, ``ganspace``) with its accuracies.
    """
    job = from_configdict(SupervisionConfig, config)
    bundle = load_bundle(job.bundle)
    streams = streams_of(job)
    summary: dict[str, Any] = dict(bundle=str(bundle.path), fit=job.fit, seed=job.seed, rendered={})

    def samples(variant: str) -> Samples:
        found = load_samples(bundle, job, variant, log=log)
        summary["rendered"][variant] = found.rendered
        return found

    with jax.default_matmul_precision(job.matmul_precision):
        if job.fit in ("linknet", "both"):
            summary["linknet"] = fit_linknet(bundle, samples("mixed"), bundle.descriptor(), job, streams["linknet"], log)
        if job.fit in ("boundaries", "both"):
            summary["boundaries"] = fit_boundaries(bundle, samples("single"), bundle.descriptor(), job, log)
        if job.ganspace.enabled:
            summary["ganspace"] = fit_bundle_ganspace(bundle, bundle.w_avg(), job, streams["ganspace"], log)
    return summary


def _recorded_path(bundle: Bundle, path: Path) -> str:
    """A sample cache folder as the reports record it: relative to the bundle when inside it (bundles move),
    else its name alone (``<variant>-<fingerprint digest>``, which identifies the samples wherever they are)."""
    path = Path(path).resolve()
    root = Path(bundle.path).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name


def _floats(values) -> list[float | None]:
    """JSON-safe floats (NaN -> None)."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, np.float64).reshape(-1)]


def fit_linknet(bundle: Bundle, samples: Samples, descriptor: Descriptor, job: SupervisionConfig,
                key: jax.Array, log: Log) -> dict[str, Any]:
    """Trains LinkNet on the mixed samples and saves it into the bundle; returns its report."""
    targets = np.asarray(binarize(jnp.asarray(samples.logits), descriptor.loss))
    names = descriptor.attribute_names
    result = train_linknet(samples.w, targets, loss_kind=descriptor.loss, settings=job.linknet, key=key,
                           log=log, attribute_names=names)
    report = dict(
        accuracies=dict(zip(names, _floats(result.val_accuracy[-1]))),
        accuracy_mean=_floats(result.val_accuracy_mean[-1:])[0],
        balanced_accuracies=dict(zip(names, _floats(result.val_balanced_accuracy))),
        positive_rates=dict(zip(names, _floats(result.positive_rate))),
        N=int(samples.w.shape[0]), num_train=result.num_train, num_val=result.num_val,
        epochs=job.linknet.epochs, seed=job.seed, batch_size=job.linknet.batch_size,
        class_balanced=job.linknet.class_balanced,
        learning_rate=job.linknet.learning_rate, loss=descriptor.loss, descriptor=descriptor.name,
        attribute_names=list(names), truncation_psi=job.sampling.truncation_psi,
        initial_loss=result.initial_loss, train_loss=_floats(result.train_loss),
        val_loss=_floats(result.val_loss), val_accuracy_mean=_floats(result.val_accuracy_mean),
        samples=_recorded_path(bundle, samples.cache_dir),
    )
    cfg = bundle.generator[0]
    link_cfg = LinkNetConfig(num_ws=cfg.num_ws, w_dim=cfg.w_dim, num_outputs=descriptor.num_outputs)
    save_converted(bundle.path / "linknet",
                   Converted(kind="linknet", config=link_cfg.to_dict(), variables=result.variables,
                             manifest=dict(extra=report)),
                   converter="magec_jax.supervision/1", overwrite=True)
    update_manifest(bundle.path, linknet="linknet")
    log(f"linknet: saved {bundle.path / 'linknet'}; val accuracy {report['accuracy_mean']:.3f}; per attribute "
        "accuracy / balanced accuracy / positive rate: "
        + ", ".join(f"{a} " + " / ".join("n/a" if r[a] is None else f"{r[a]:.3f}" for r in
                                         (report["accuracies"], report["balanced_accuracies"], report["positive_rates"]))
                    for a in names))
    return report


def attribute_scores(logits_NxK: np.ndarray, loss_kind: LossKind) -> np.ndarray:
    """F's per-attribute score for ranking samples: the logit (bce) or the class log-odds (softmax_ce)."""
    if loss_kind == "bce":
        return np.asarray(logits_NxK, np.float64)
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits_NxK, jnp.float32), axis=-1), np.float64)
    return logp - np.log(-np.expm1(np.minimum(logp, -1e-12)))


def fit_boundaries(bundle: Bundle, samples: Samples, descriptor: Descriptor, job: SupervisionConfig,
                   log: Log) -> dict[str, Any]:
    """Fits one InterFaceGAN boundary per attribute of F on the single-w samples; writes them into the bundle."""
    settings = job.boundaries
    scores = attribute_scores(samples.logits, descriptor.loss)
    fitted, report = {}, {}
    for k, name in enumerate(descriptor.attribute_names):
        try:
            fit = fit_boundary(samples.w, scores[:, k], ratio=settings.ratio, val_fraction=settings.val_fraction,
                               c=settings.svm_c, seed=job.seed)
        except ValueError as e:
            raise MagecError(f"boundary {name}: {e}") from None
        fitted[name] = fit.normal
        report[name] = dict(train_accuracy=fit.train_accuracy, val_accuracy=fit.val_accuracy,
                            num_train=fit.num_train, num_val=fit.num_val)
        log(f"boundary {name}: SVM accuracy train {fit.train_accuracy:.3f}, val {fit.val_accuracy:.3f} "
            f"({fit.num_train} + {fit.num_val} samples)")
    existing = bundle.directions()
    kept = sorted(set(existing) - set(fitted))
    imio.atomic_save_npz(bundle.path / "directions.npz", **{**existing, **fitted})
    result = dict(attributes=report, N=int(samples.w.shape[0]), seed=job.seed, ratio=settings.ratio,
                  val_fraction=settings.val_fraction, svm_c=settings.svm_c,
                  truncation_psi=job.sampling.truncation_psi, kept=kept, samples=_recorded_path(bundle, samples.cache_dir))
    imio.atomic_write_json(bundle.path / "directions_fit.json", result)
    update_manifest(bundle.path, directions="directions.npz")
    log(f"boundaries: {len(fitted)} fitted into {bundle.path / 'directions.npz'}"
        + (f" (kept {len(kept)} other directions)" if kept else ""))
    return result


def fit_bundle_ganspace(bundle: Bundle, w_avg: np.ndarray, job: SupervisionConfig, key: jax.Array,
                        log: Log) -> dict[str, Any]:
    """PCA of mapped w saved as ``BUNDLE/ganspace.npz`` (named ``ganspace`` in the manifest)."""
    settings = job.ganspace
    cfg, gen_variables = bundle.generator
    w = mapped_ws(cfg, gen_variables, key, num_samples=settings.num_samples, batch_size=settings.batch_size,
                  w_avg_D=w_avg, truncation_psi=job.sampling.truncation_psi)
    pca = fit_ganspace(w, settings.num_components)
    tmp = bundle.path / ".ganspace.tmp.npz"  # np.savez keeps a name ending in .npz as it is
    save_ganspace(tmp, pca)
    os.replace(tmp, bundle.path / "ganspace.npz")
    update_manifest(bundle.path, ganspace="ganspace.npz")
    log(f"ganspace: {len(pca.std)} components of {settings.num_samples} mapped w -> {bundle.path / 'ganspace.npz'}")
    return dict(N=settings.num_samples, num_components=int(len(pca.std)), std=_floats(pca.std), seed=job.seed)

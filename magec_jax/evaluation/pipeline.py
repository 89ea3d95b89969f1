"""The evaluation run behind ``python -m magec_jax.evaluate``: inversion methods compared on reconstruction
and editability (paper section 4.2; METHOD.md "Evaluation").

Stages, per method (each one's outputs are files written atomically; a rerun skips whatever exists)::

    images --descriptor F--> real/descriptor.npz        which images lack each edit's target attribute
    references --features--> real/features.npz          the real manifold of the realism score
    images --inversion job--> <m>/inversions/           w = p(x), G(w); MSE, LPIPS, steps, seconds
    w --edit e, render--> <m>/edits/<e>__<name>.png     x_edit = G(e(w)) (and its latent, .npz key w)
    x_edit --inversion job--> <m>/reprojections/        w' = p(x_edit)      (same job, same engine)
    --> <m>/scores/<e>.npz                              LPIPS(G(w), x_edit), LPIPS(x_edit, x_cyc),
                                                        LPIPS(G(w), x_cyc) with x_cyc = G(e^-1(w')),
                                                        P_F(target) of G(w) and x_edit, the identity
                                                        distance 1 - cos(ID(x_edit), ID(x)), realism features
    --> results.json, results.md, figures/*.png         rebuilt from the files above on every run

A tuned method (``pti.enabled``: pivotal tuning, ``magec_jax.inversion.pti_job``) tunes a weight delta per
image on its pivots (its own inversions, or those of the method ``pivots`` names) into ``<m>/pti/``, and
renders ``G_i(w)`` and ``x_edit = G_i(e(w))`` with each image's tuned generator ``G_i``; the edited latent
``e(w)`` is the one the untuned method on the same pivots renders, so the two differ by the generator only.
A method with ``ecs`` off skips the re-projection (no ECS, no latent cycle). A tuned method's edits are
not re-projected and its ECS is undefined (NaN): a re-projection ``p(x_edit)`` would be a new
inversion followed by a new tuning, whose generator is not ``G_i``, so the cycle would compare two generators
rather than measure how the edit survives one. Its reconstruction numbers are the tuned generator's; its steps
and seconds are the pivot's and the tuning's together.

``images.txt`` (the evaluated images, absolute paths) and ``<m>/reproject.txt`` (the edited images) are the
list files the inversion jobs read; outputs are named by the images' file names (which must be unique).

Edits are scored only on the images that lack their target attribute according to F on the real image
(every image when the edit has no target), so the subsets are the same for every method and the paired
t-tests pair the same images. An image that failed in any method is left out of every method's means.
Images are rendered with the noise maps their inversion used (the optimised ones for Image2StyleGAN++'s
noise stage, else the generator's constant buffers). One :class:`Engine` per method serves both inversion
jobs, so each method compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from magec_jax import images as imio
from magec_jax.bundle import load_bundle
from magec_jax.configdicts import from_configdict
from magec_jax.editing.render import Editor, Latent, Renderer, load_latent, load_pca, map_batches
from magec_jax.editing.styleflow import bundle_editor
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.evaluation.config import EditSpec, EvalConfig, MethodSpec
from magec_jax.evaluation.features import realism_extractor
from magec_jax.evaluation import report
from magec_jax.evaluation.metrics import attribute_probabilities
from magec_jax.evaluation.store import read_rows, read_scores, write_rows, write_scores
from magec_jax.inversion import job as job_lib
from magec_jax.inversion import pti_job
from magec_jax.inversion.engine import Engine, Networks
from magec_jax.inversion.magec_loss import binarize
from magec_jax.logs import Log, to_stderr
from magec_jax.models import deltas as deltas_lib
from magec_jax.models.stylegan2 import FROZEN
from magec_jax.supervision.styleflow import descriptor_context_fn




class Evaluator:
    """The loaded networks, compiled functions and file layout of one evaluation run.

    Args:
      cfg: the evaluation settings.
      nets: the bundle's networks.
      bundle: the loaded bundle (directions and GANSpace PCA).
      log: where progress lines go.
    """

    def __init__(self, cfg: EvalConfig, nets: Networks, bundle: Any, log: Log = to_stderr):
        self.cfg, self.nets, self.bundle, self.log = cfg, nets, bundle, log
        self.out = Path(cfg.out_dir)
        self.framing = bundle.image_framing()  # how the images are framed for the generator (and its jobs)
        pca, pca_source = load_pca(bundle, cfg.ganspace, nets.w_dim)
        self.renderer = Renderer(nets.synthesize, nets.generator, nets.noise_init, cfg.batch_size)
        flow, contexts = None, None
        if any(spec.edit.kind == "styleflow" for spec in cfg.edit_specs):
            flow = bundle_editor(bundle)
            from_images = descriptor_context_fn(bundle, flow.context_source)
            if from_images is not None:
                contexts = lambda ws: from_images(self.renderer(ws))  # noqa: E731 -- F on G(w), constant noise
        self.editor = Editor(nets.num_ws, nets.w_dim, bundle.directions(), pca, pca_source, flow, contexts)
        names = () if nets.descriptor is None else nets.descriptor.attribute_names
        for spec in cfg.edit_specs:
            self.editor.check(spec.edit)
            if spec.target and spec.target not in names:
                raise MagecError(f"edit {spec.name!r}: target {spec.target!r} is not an output of the bundle's "
                                 f"descriptor ({', '.join(names) or 'the bundle has none'})")
        self.extractor = realism_extractor(cfg.realism.vgg16_weights, nets.lpips_variables)
        self._lpips = jax.jit(nets.lpips)
        self._features = jax.jit(self.extractor.apply)
        self._logits = None if nets.descriptor is None else jax.jit(nets.descriptor.apply)
        self._identity = None if nets.identity is None else jax.jit(nets.identity.apply)
        self._generator_fp = deltas_lib.generator_fingerprint(
            {k: v for k, v in nets.generator.items() if k != FROZEN}) if any(
            m.tuned for m in cfg.method_specs) else None

    # ---- compiled batch functions (one shape each: batches of cfg.batch_size) ------------------------------

    def lpips(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """LPIPS per image pair ``[N]``."""
        fn = lambda a, b: self._lpips(self.nets.lpips_variables, a, b)  # noqa: E731
        return map_batches(fn, x, y, batch_size=self.cfg.batch_size)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """F's logits ``[N, K]``."""
        fn = lambda a: self._logits(self.nets.descriptor.variables, a)  # noqa: E731
        return map_batches(fn, images, batch_size=self.cfg.batch_size)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Realism features ``[N, F]``."""
        fn = lambda a: self._features(self.extractor.variables, a)  # noqa: E731
        return map_batches(fn, images, batch_size=self.cfg.batch_size)

    def identity_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``1 - cos(ID(x), ID(y))`` per image pair ``[N]`` with the bundle's identity network (NaN without one)."""
        if self._identity is None:
            return np.full(len(x), np.nan, np.float32)
        fn = lambda a: self._identity(self.nets.identity.variables, a)  # noqa: E731
        ex, ey = map_batches(fn, x, batch_size=self.cfg.batch_size), map_batches(fn, y, batch_size=self.cfg.batch_size)
        return (1.0 - np.sum(np.asarray(ex, np.float32) * np.asarray(ey, np.float32), axis=-1)).astype(np.float32)

    def probability(self, images: np.ndarray, target: str) -> np.ndarray:
        """F's probability of ``target`` per image ``[N]``."""
        desc = self.nets.descriptor
        return attribute_probabilities(self.logits(images), desc.loss)[:, desc.attribute_names.index(target)]

    # ---- layout -------------------------------------------------------------------------------------------

    def method_dir(self, method: MethodSpec) -> Path:
        return self.out / method.name

    def pivots_of(self, method: MethodSpec) -> MethodSpec:
        """The method whose inversions are ``method``'s latents (itself unless it names ``pivots``)."""
        return method if method.pivots == method.name else self.cfg.method(method.pivots)

    def inversions(self, method: MethodSpec) -> Path:
        return self.method_dir(self.pivots_of(method)) / "inversions"

    def tuned_dir(self, method: MethodSpec) -> Path:
        """A tuned method's weight deltas and tuned reconstructions (``pti_job``'s layout)."""
        return self.method_dir(method) / pti_job.PTI_DIR

    def reprojections(self, method: MethodSpec) -> Path:
        return self.method_dir(method) / "reprojections"

    def edited(self, method: MethodSpec, spec: EditSpec, name: str) -> Path:
        """The edited image ``x_edit`` (``.png``; its latent is the ``.npz`` beside it)."""
        return self.method_dir(method) / "edits" / f"{spec.name}__{name}.png"

    def scores_file(self, method: MethodSpec, spec: EditSpec) -> Path:
        return self.method_dir(method) / "scores" / f"{spec.name}.npz"

    def load_input(self, path: Path) -> np.ndarray:
        return imio.load_image(path, self.nets.resolution, max_pixels=self.cfg.max_image_pixels,
                               framing=self.framing)

    # ---- stage 1: the real images -------------------------------------------------------------------------

    def real_images(self) -> "RealImages":
        """Lists the evaluated images, writes ``images.txt`` and F's logits of the real images."""
        sources = imio.list_images(self.cfg.images)
        if self.cfg.num_images:
            sources = sources[: self.cfg.num_images]
        if not sources:
            raise MagecError(f"{self.cfg.images}: no images to evaluate")
        names = [imio.output_name(p, None) for p in sources]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise MagecError(f"{self.cfg.images}: several images share a file name ({', '.join(dup[:5])}); "
                             "the evaluation names outputs by file name")
        paths = [p.resolve() for p in sources]
        list_file = self.out / "images.txt"
        imio.atomic_write_bytes(list_file, ("".join(f"{p}\n" for p in paths)).encode())
        logits = {}
        if self.nets.descriptor is not None:
            cache = self.out / "real" / "descriptor.npz"
            logits = read_rows(cache, "logits")
            todo = [(n, p) for n, p in zip(names, paths) if n not in logits]
            if todo:
                self.log(f"evaluate: descriptor F on {len(todo)} real images")
                for chunk in _chunks(todo, self.cfg.batch_size):
                    loaded = self._load_many(chunk)
                    if loaded:
                        rows = self.logits(np.stack([img for _, img in loaded]))
                        logits.update({n: r for (n, _), r in zip(loaded, rows)})
                write_rows(cache, "logits", logits, attribute_names=np.asarray(self.nets.descriptor.attribute_names))
        return RealImages(names=names, paths=paths, list_file=list_file, logits=logits)

    def _load_many(self, items: Sequence[tuple[str, Path]]) -> list[tuple[str, np.ndarray]]:
        loaded = []
        for name, path in items:
            try:
                loaded.append((name, self.load_input(path)))
            except FileFormatError as e:
                self.log(f"skipped {e}")
        return loaded

    def lacks(self, real: "RealImages", spec: EditSpec, name: str) -> bool:
        """Whether the real image ``name`` lacks the edit's target by F (True for edits without target)."""
        if not spec.target:
            return True
        if name not in real.logits:
            return False
        desc = self.nets.descriptor
        hard = np.asarray(binarize(real.logits[name], desc.loss))
        return not hard[desc.attribute_names.index(spec.target)]

    def reference_features(self, real: "RealImages") -> tuple[list[str], np.ndarray]:
        """Realism features of the real reference images (cached in ``real/features.npz``)."""
        refs = real.paths if not self.cfg.realism.reference_images else [
            p.resolve() for p in imio.list_images(self.cfg.realism.reference_images)]
        cache = self.out / "real" / "features.npz"
        rows = read_rows(cache, "features", kind=self.extractor.name)
        todo = [(str(p), p) for p in refs if str(p) not in rows]
        if todo:
            self.log(f"evaluate: realism features ({self.extractor.name}) of {len(todo)} reference images")
            for chunk in _chunks(todo, self.cfg.batch_size):
                loaded = self._load_many(chunk)
                if loaded:
                    feats = self.features(np.stack([img for _, img in loaded]))
                    rows.update({n: f for (n, _), f in zip(loaded, feats)})
            write_rows(cache, "features", rows, kind=np.asarray(self.extractor.name))
        keys = [str(p) for p in refs if str(p) in rows]
        if len(keys) <= self.cfg.realism.k:
            raise MagecError(f"{self.cfg.realism.reference_images or self.cfg.images}: the realism score needs more "
                             f"than realism.k={self.cfg.realism.k} readable reference images, found {len(keys)}")
        return keys, np.stack([rows[k] for k in keys])

    # ---- stage 2: inversions --------------------------------------------------------------------------------

    def job_config(self, method: MethodSpec, images: Path, out_dir: Path, name: str) -> job_lib.JobConfig:
        """The method's inversion job on ``images`` (a list file), writing to ``out_dir``."""
        return dataclasses.replace(method.job, bundle=self.cfg.bundle, images=str(images), out_dir=str(out_dir),
                                   name=name, max_image_pixels=self.cfg.max_image_pixels,
                                   framing=method.job.framing or self.framing)

    def engine(self, method: MethodSpec) -> Engine:
        """One engine for the method's settings: its inversion and re-projection jobs share the compiled steps."""
        return Engine(self.nets, method.job.settings)

    def invert(self, method: MethodSpec, real: "RealImages", engine: Engine) -> None:
        """p(x) for every image (the inversion job; it resumes by itself)."""
        self.log(f"evaluate [{method.name}]: inverting the images")
        job_lib.run(self.job_config(method, real.list_file, self.inversions(method), method.name), engine=engine,
                    log=self.log)

    def tune(self, method: MethodSpec, real: "RealImages") -> None:
        """A tuned method's pivotal tuning of its pivots (the PTI stage; it resumes by itself)."""
        self.log(f"evaluate [{method.name}]: pivotal tuning of the pivots of {self.pivots_of(method).name}")
        job = self.job_config(method, real.list_file, self.inversions(method), method.name)
        pti_job.run(job, bundle=self.bundle, networks=self.nets, tuned_dir=self.tuned_dir(method), log=self.log)

    def has_result(self, method: MethodSpec, name: str) -> bool:
        """Whether the image has its latent (and, for a tuned method, its tuned generator)."""
        if not job_lib.is_done(self.inversions(method), name):
            return False
        return not method.tuned or pti_job.is_tuned(self.tuned_dir(method), name)

    def subset(self, method: MethodSpec, real: "RealImages", spec: EditSpec) -> list[str]:
        """The images an edit is scored on for a method: inverted (and tuned), and lacking the target."""
        return [n for n in real.names if self.has_result(method, n) and self.lacks(real, spec, n)]

    def tuned_generator(self, method: MethodSpec, name: str) -> Any:
        """The generator's variables with the image's weight delta applied (a tuned method's)."""
        return deltas_lib.tuned_variables(self.nets.generator, self.tuned_dir(method) / f"{name}.npz",
                                          str(self.cfg.bundle), self._generator_fp)

    def render(self, method: MethodSpec, names: Sequence[str], ws_NxLxD: np.ndarray,
               latents: Sequence[Latent]) -> np.ndarray:
        """``G(ws[i])`` for rows belonging to the images ``names[i]`` (rendered with ``latents[i]``'s noise): by
        the bundle's generator, or for a tuned method by each image's tuned generator (one call per image)."""
        if not method.tuned:
            return self.renderer(ws_NxLxD, self.renderer.noise_for(latents))
        out = np.zeros((len(names), self.nets.resolution, self.nets.resolution, 3), np.float32)
        for name in dict.fromkeys(names):
            rows = [i for i, n in enumerate(names) if n == name]
            out[rows] = self.renderer(ws_NxLxD[rows], variables=self.tuned_generator(method, name))
        return out

    def write_edits(self, method: MethodSpec, real: "RealImages") -> Path:
        """x_edit = G(e(w)) as PNG (and its latent) for every (edit, image) of the subsets; returns the list
        file of the edited images to re-project."""
        todo, wanted = [], []
        for spec in self.cfg.edit_specs:
            for name in self.subset(method, real, spec):
                path = self.edited(method, spec, name)
                wanted.append(path)
                if not path.is_file():
                    todo.append((spec, name))
        if todo:
            self.log(f"evaluate [{method.name}]: rendering {len(todo)} edited images")
        for chunk in _chunks(todo, self.cfg.batch_size):
            lats = [load_latent(self.inversions(method) / f"{name}.npz") for _, name in chunk]
            ws = np.stack([self.editor.apply(spec.edit, lat.w_LxD) for (spec, _), lat in zip(chunk, lats)])
            images = self.render(method, [name for _, name in chunk], ws, lats)
            for (spec, name), lat, w, img in zip(chunk, lats, ws, images):
                path = self.edited(method, spec, name)
                noise = {} if lat.noise is None else {f"noise_{i}": n for i, n in enumerate(lat.noise)}
                imio.atomic_save_npz(path.with_suffix(".npz"), w=w[None], **noise)
                imio.atomic_write_bytes(path, imio.png_bytes(img))
        list_file = self.method_dir(method) / "reproject.txt"
        imio.atomic_write_bytes(list_file, "".join(f"{p.resolve()}\n" for p in wanted).encode())
        return list_file

    def reproject(self, method: MethodSpec, list_file: Path, engine: Engine) -> None:
        """w' = p(x_edit) with the method's own inversion (the same job and engine)."""
        if not list_file.read_text().strip():
            self.log(f"evaluate [{method.name}]: no edited images to re-project")
            return
        self.log(f"evaluate [{method.name}]: re-projecting the edited images")
        job_lib.run(self.job_config(method, list_file, self.reprojections(method), f"{method.name}-reproject"),
                    engine=engine, log=self.log)

    # ---- stage 3: per-image scores ---------------------------------------------------------------------------

    def score(self, method: MethodSpec, real: "RealImages") -> None:
        """LPIPS triple, F probabilities, identity distance and realism features of every scored (edit, image);
        cached per edit."""
        for spec in self.cfg.edit_specs:
            names = [n for n in self.subset(method, real, spec)
                     if not method.reprojects or job_lib.is_done(self.reprojections(method), f"{spec.name}__{n}")]
            path = self.scores_file(method, spec)
            cached = read_scores(path, self.extractor.name)
            todo = [n for n in names if n not in cached]
            if not todo:
                continue
            self.log(f"evaluate [{method.name}]: scoring {spec.name} on {len(todo)} images")
            t0 = time.perf_counter()
            for done, chunk in enumerate(_chunks(todo, self.cfg.batch_size), start=1):
                cached.update(self._score_chunk(method, spec, chunk, real))
                write_scores(path, cached, self.extractor.name)
                elapsed = time.perf_counter() - t0
                left = elapsed / done * (-(-len(todo) // self.cfg.batch_size) - done)
                self.log(f"evaluate [{method.name}] {spec.name}: {min(done * self.cfg.batch_size, len(todo))}/"
                         f"{len(todo)} scored, {elapsed:.0f} s, ETA {left:.0f} s")

    def _score_chunk(self, method: MethodSpec, spec: EditSpec, names: Sequence[str],
                     real: "RealImages") -> dict[str, dict]:
        lats = [load_latent(self.inversions(method) / f"{n}.npz") for n in names]
        w = np.stack([lat.w_LxD for lat in lats])
        both = self.render(method, list(names) * 2, np.concatenate([w, self.editor.apply(spec.edit, w)]), lats * 2)
        x_gw, x_edit = both[: len(names)], both[len(names):]
        x_real = np.stack([self.load_input(real.path_of[n]) for n in names])
        rows = dict(lpips_gw_edit=self.lpips(x_gw, x_edit), features=self.features(x_edit),
                    id_edit=self.identity_distance(x_edit, x_real))
        if not method.reprojects:  # ECS undefined for a tuned generator (module docstring) or not asked for
            rows["lpips_edit_cyc"] = rows["lpips_gw_cyc"] = np.full(len(names), np.nan, np.float32)
        else:
            again = [load_latent(self.reprojections(method) / f"{spec.name}__{n}.npz") for n in names]
            x_cyc = self.renderer(self.editor.apply(spec.edit.inverse(), np.stack([a.w_LxD for a in again])),
                                  self.renderer.noise_for(again))
            rows["lpips_edit_cyc"] = self.lpips(x_edit, x_cyc)
            rows["lpips_gw_cyc"] = self.lpips(x_gw, x_cyc)
        if spec.target:
            rows["p_before"] = self.probability(x_gw, spec.target)
            rows["p_after"] = self.probability(x_edit, spec.target)
        else:
            rows["p_before"] = rows["p_after"] = np.full(len(names), np.nan, np.float32)
        return {n: {k: v[i] for k, v in rows.items()} for i, n in enumerate(names)}

    # ---- rendering for the figures -------------------------------------------------------------------------

    def latent(self, method: MethodSpec, name: str, spec: EditSpec | None = None) -> Latent:
        """The inversion of an image, or (with ``spec``) of its edited image."""
        if spec is None:
            return load_latent(self.inversions(method) / f"{name}.npz")
        return load_latent(self.reprojections(method) / f"{spec.name}__{name}.npz")


@dataclasses.dataclass(frozen=True)
class RealImages:
    """The evaluated images: output names, absolute paths, the list file the jobs read, and F's logits of
    the readable ones (empty without a descriptor)."""

    names: list[str]
    paths: list[Path]
    list_file: Path
    logits: dict[str, np.ndarray]

    @functools.cached_property
    def path_of(self) -> dict[str, Path]:
        return dict(zip(self.names, self.paths))


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i: i + size] for i in range(0, len(items), size)]


# ---- the run -------------------------------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, *, networks: Networks | None = None, log: Log = to_stderr) -> dict:
    """Runs (or resumes) the evaluation described by ``config``; returns the results (also ``results.json``).

    Args:
      config: an evaluation config (``configs/eval_*.py``).
      networks: the bundle's networks if already built (tests); by default the bundle is loaded.
      log: where progress lines go.
    """
    cfg = from_configdict(EvalConfig, config)
    bundle = load_bundle(cfg.bundle)
    nets = networks if networks is not None else bundle.networks()
    ev = Evaluator(cfg, nets, bundle, log)
    t0 = time.perf_counter()
    real = ev.real_images()
    reference = ev.reference_features(real)
    log(f"evaluate: {len(real.names)} images, {len(cfg.method_specs)} methods, {len(cfg.edit_specs)} edits "
        f"-> {ev.out}")
    method_seconds = {}
    for method in cfg.method_specs:
        t_method = time.perf_counter()
        engine = ev.engine(ev.pivots_of(method))
        ev.invert(ev.pivots_of(method), real, engine)
        if method.tuned:
            ev.tune(method, real)
        list_file = ev.write_edits(method, real)
        if method.reprojects:
            ev.reproject(method, list_file, engine)
        ev.score(method, real)
        method_seconds[method.name] = time.perf_counter() - t_method
        log(f"evaluate [{method.name}]: done, {time.perf_counter() - t0:.0f} s since start")
    results = report.build(ev, real, reference)
    results["run_seconds"] = dict(total=time.perf_counter() - t0, methods=method_seconds)
    report.write(ev, real, results)
    log(f"evaluate: results in {ev.out / 'results.md'} ({time.perf_counter() - t0:.0f} s)")
    return results

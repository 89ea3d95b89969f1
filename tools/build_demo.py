"""Builds the demo bundle (``demo/bundle``) and the example photographs (``examples/``) from a trained generator.

    python tools/build_demo.py                                   # re-supervise the committed demo generator
    python tools/build_demo.py --generator runs/lfw64s/generator # after train_gan --config configs/lfw_stylegan2.py:small

Steps, each with the project's own tools; the bundle is assembled in ``--work`` (default ``runs/demo_build``)
and copied into ``--out`` at the end:
  1. convert the offline face models (``../shared/data/face_models``) with ``ports.tfjs``;
  2. score 1,000 LFW TRAINING photographs with them (the generator's crop, at its resolution, the whole frame
     as the face crop: the training crop is already tight on the face). The thresholds for real photographs:
     Male and Smiling keep the networks' own 0.5 rules, Young is set at the median expected age;
  3. ``build_bundle``: the generator, faceres identity, faceres+emotion descriptor, w_avg from 50,000 mapped z;
  4. ``magec_jax.linknet`` with ``configs/linknet_demo.py``, boundaries stage: single-w samples, whose
     threshold-free scores are cached (``WORK/supervision``), and InterFaceGAN boundaries (which depend only on
     the ranking of the scores, so not on any threshold);
  5. calibration (``magec_jax.supervision.calibration``): the face models read generated faces differently
     from real ones, so the descriptor gets ``generated_thresholds``, the quantiles of the single-w samples'
     scores that give them the label rates the real photographs have under the real thresholds. The label
     rates before and after, on real photographs at full and at generator resolution, with two face crops,
     and on single-w and per-layer-mixed samples, go to ``docs/eval_demo/label_calibration.json``;
  6. LinkNet on the per-layer-mixed samples labelled with ``generated_thresholds`` (the loss
     ``configs/linknet_demo.py`` names), and for the record the other loss (plain / class-balanced) on the
     same samples: ``docs/eval_demo/linknet.json``; then GANSpace;
  7. copy the bundle into ``--out/bundle`` (its ``generator/`` is left as it is when it holds the same
     weights), and ``examples/``: one photograph each of 8 HELD-OUT people (never seen in training), as the
     central crop the generator was trained on, saved as PNG (``tools/heldout_faces.py``);
  8. two whole photographs of held-out people for the photograph demo (``heldout_faces.PHOTOGRAPHS``), and the
     bundle's framing: the template of the eyes and mouth corners on 256 of the generator's own samples
     (``magec_jax.faces.pipeline.fit_generator_template``), which photographs are aligned to.
The generator's crop and held-out fraction are read from its manifest (``extra``, written by train_gan).
Every sample is cached, so an interrupted or repeated build renders only what is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from magec_jax import images as imio
from magec_jax.bundle import build_bundle, load_bundle, set_template, update_manifest
from magec_jax.configdicts import from_configdict
from magec_jax.faces.pipeline import fit_generator_template
from magec_jax.inversion.magec_loss import binarize
from magec_jax.models import faceres as faceres_model
from magec_jax.models.face_attributes import ATTRIBUTE_NAMES, FaceAttributeThresholds, label_rates, thresholds_for_rates
from magec_jax.models.stylegan2 import load_generator
from magec_jax.supervision import calibration
from magec_jax.supervision import job as supervision
from magec_jax.supervision.samples import params_digest
from magec_jax.supervision.train import train_linknet
from magec_jax.training import data as lfw
from magec_jax.weights import load_converted, save_converted
from heldout_faces import write_photographs, write_portraits  # tools/, this script's folder
from ports.tfjs import convert_emotion, convert_faceres

REPO = Path(__file__).resolve().parents[1]
NUM_EXAMPLES = 8
NUM_PHOTOS = 1000
NUM_FACE_BOX_SAMPLES = 1000  # generated samples also scored with the aligned-face box, for the crop comparison


def main() -> None:
    shared = Path(os.environ.get("MAGEC_SHARED", REPO.parent / "shared"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", type=Path, default=REPO / "demo" / "bundle" / "generator")
    parser.add_argument("--lfw", type=Path, default=shared / "data" / "lfw" / "lfw-deepfunneled.tar")
    parser.add_argument("--face-models", type=Path, default=shared / "data" / "face_models")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "demo_build")
    parser.add_argument("--out", type=Path, default=REPO / "demo")
    parser.add_argument("--examples", type=Path, default=REPO / "examples")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "eval_demo")
    args = parser.parse_args()
    extra = load_converted(args.generator, kind="stylegan2").manifest.get("extra", {})
    crop, fraction = int(extra.get("crop", lfw.DEFAULT_CROP)), float(extra.get("heldout_fraction", lfw.DEFAULT_HELDOUT_FRACTION))
    resolution = load_generator(args.generator)[0].img_resolution
    args.work.mkdir(parents=True, exist_ok=True)

    # 1-2. face models; real photographs and their thresholds
    parts = args.work / "parts"
    faceres = _converted(parts / "faceres", lambda: convert_faceres(args.face_models / "faceres.json"))
    emotion = _converted(parts / "emotion", lambda: convert_emotion(args.face_models / "emotion.json"))
    variables = {"faceres": load_converted(faceres).variables, "emotion": load_converted(emotion).variables}
    paths = lfw.list_source(args.lfw)
    train_idx, _ = lfw.split_by_person(paths, fraction)
    photo_paths = [paths[i] for i in train_idx[:: max(1, len(train_idx) // NUM_PHOTOS)]]
    real = _photo_scores(args.work / "photo_scores.npz", variables, args.lfw, photo_paths, crop, resolution)
    real_thresholds = FaceAttributeThresholds(age_threshold=float(np.median(real["g_res"][:, 1])))
    print(f"real photographs ({len(photo_paths)}): {real_thresholds}", flush=True)

    # 3-4. the bundle, the single-w samples and the boundaries
    bundle = build_bundle(
        args.work / "bundle",
        generator=args.generator,
        identity=dict(kind="faceres", path=faceres, face_box=None),
        descriptor=dict(kind="face_attributes", faceres=faceres, emotion=emotion,
                        thresholds=dataclasses.asdict(real_thresholds), face_box=None),
        overwrite=True,
    )
    config = _load_config(REPO / "configs" / "linknet_demo.py")
    config.bundle = str(bundle.path)
    config.cache_dir = str(args.work / "supervision")
    job = from_configdict(supervision.SupervisionConfig, config)
    config.fit, config.ganspace.enabled = "boundaries", False
    supervision.run(config)

    # 5. calibration of the thresholds for generated samples
    single = supervision.load_samples(bundle, job, "single").outputs
    generated_thresholds = thresholds_for_rates(single, tuple(label_rates(real["g_res"], real_thresholds)))
    print(f"generated samples ({len(single)}): {generated_thresholds}", flush=True)
    descriptor = dict(bundle.manifest["descriptor"], generated_thresholds=dataclasses.asdict(generated_thresholds))
    update_manifest(bundle.path, descriptor=descriptor)
    bundle = load_bundle(bundle.path)
    mixed = supervision.load_samples(bundle, job, "mixed")
    cfg, gen_variables = bundle.generator
    face_box_path = args.work / "face_box_scores.npy"
    if not face_box_path.exists():
        imio.atomic_save_npy(face_box_path, calibration.generated_scores(
            cfg, gen_variables, variables, key=supervision.streams_of(job)["single"], num_samples=NUM_FACE_BOX_SAMPLES,
            batch_size=job.sampling.batch_size, w_avg_D=bundle.w_avg(), box=faceres_model.FACE_BOX, per_layer=False))
    face_box_single = np.load(face_box_path)
    report = _calibration_report(real, single, mixed.outputs, face_box_single, real_thresholds, generated_thresholds,
                                 len(photo_paths), crop, resolution)
    imio.atomic_write_json(args.docs / "label_calibration.json", report)

    # 6. LinkNet (and the other loss, for the record), GANSpace
    config.fit, config.ganspace.enabled = "linknet", True
    summary = supervision.run(config)
    other = dataclasses.replace(job.linknet, class_balanced=not job.linknet.class_balanced)
    targets = np.asarray(binarize(jnp.asarray(mixed.logits), "bce"))
    alternative = train_linknet(mixed.w, targets, loss_kind="bce", settings=other,
                                key=supervision.streams_of(job)["linknet"], attribute_names=ATTRIBUTE_NAMES)
    losses = {("class_balanced" if job.linknet.class_balanced else "plain"): _linknet_row(summary["linknet"]),
              ("class_balanced" if other.class_balanced else "plain"): _linknet_row(dict(
                  accuracies=_named(alternative.val_accuracy[-1]),
                  balanced_accuracies=_named(alternative.val_balanced_accuracy),
                  train_loss=[float(v) for v in alternative.train_loss], val_loss=[float(v) for v in alternative.val_loss]))}
    imio.atomic_write_json(args.docs / "linknet.json", dict(
        N=summary["linknet"]["N"], num_train=summary["linknet"]["num_train"], num_val=summary["linknet"]["num_val"],
        epochs=job.linknet.epochs, positive_rates=summary["linknet"]["positive_rates"],
        in_bundle="class_balanced" if job.linknet.class_balanced else "plain", losses=losses,
        boundaries=json.loads((bundle.path / "directions_fit.json").read_text())["attributes"]))
    print(json.dumps(losses, indent=2), flush=True)

    # 7. into place
    _install(bundle.path, args.out / "bundle")
    chosen = write_portraits(args.lfw, args.examples, NUM_EXAMPLES, crop=crop, fraction=fraction)
    print(f"examples: {', '.join(Path(p).stem for p in chosen)}", flush=True)

    # 8. whole photographs, and the framing photographs are aligned to
    photos = write_photographs(args.lfw, args.examples)
    print(f"photographs: {', '.join(p.name for p in photos)}", flush=True)
    names = sorted([f"{Path(p).stem}.png" for p in chosen] + [p.name for p in photos])
    (args.examples / "faces.txt").write_text(
        "# the face demo's photographs (configs/demo.py); written by tools/build_demo.py\n" + "".join(f"{n}\n" for n in names))
    fit = fit_generator_template(*load_bundle(args.out / "bundle").generator)
    set_template(args.out / "bundle", fit.template)
    print(f"template from {fit.found} of {fit.images} samples (spread {fit.spread:.2f} px): {fit.template}", flush=True)


def _load_config(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _converted(path: Path, convert) -> Path:
    """A converted face model, converted once into the work folder."""
    if not (path / "params.npz").exists():
        save_converted(path, convert(), overwrite=True)
    return path


def _photo_scores(path: Path, variables, source: Path, photo_paths: list[str], crop: int,
                  resolution: int) -> dict[str, np.ndarray]:
    """Scores of the photographs in three settings, cached in ``path``: ``native`` (the crop at its own size,
    the whole frame), ``g_res`` (resized to the generator's resolution, whole frame), ``g_res_face_box`` (at the
    generator's resolution, the aligned-face box)."""
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    native = lfw.decode_source(source, photo_paths, crop, crop)
    small = lfw.decode_source(source, photo_paths, resolution, crop)
    scores = dict(native=calibration.photo_scores(variables, native, box=None),
                  g_res=calibration.photo_scores(variables, small, box=None),
                  g_res_face_box=calibration.photo_scores(variables, small, box=faceres_model.FACE_BOX))
    imio.atomic_save_npz(path, **scores)
    return scores


def _calibration_report(real, single, mixed, face_box_single, real_thresholds, generated_thresholds,
                        num_photos: int, crop: int, resolution: int) -> dict:
    """The label rates of every setting under the real and the calibrated thresholds."""
    settings = {
        f"real, {crop} px crop at {crop} px (native), whole frame": real["native"],
        f"real, {crop} px crop at {resolution} px (generator resolution), whole frame": real["g_res"],
        f"real, at {resolution} px, aligned-face box {faceres_model.FACE_BOX}": real["g_res_face_box"],
        "generated, single w, whole frame": single,
        f"generated, single w, aligned-face box (first {len(face_box_single)})": face_box_single,
        "generated, per-layer-mixed w (LinkNet's), whole frame": mixed,
    }
    return dict(
        description=("Label rates of the faceres+emotion descriptor (Male: P(male) > male_prob; Young: expected "
                     "age < age_threshold; Smiling: P(happy) > happy_prob) on LFW training photographs and on the "
                     "demo generator's samples. 'real_thresholds' label real photographs (Young at their median "
                     "expected age); 'generated_thresholds' are the quantiles of the single-w samples' scores that "
                     "give them the real photographs' label rates at the generator's resolution (tools/build_demo.py)."),
        num_photos=num_photos,
        real_thresholds=dataclasses.asdict(real_thresholds),
        generated_thresholds=dataclasses.asdict(generated_thresholds),
        settings={name: dict(under_real_thresholds=calibration.score_summary(s, real_thresholds),
                             under_generated_thresholds=calibration.score_summary(s, generated_thresholds)["label_rates"])
                  for name, s in settings.items()},
    )


def _named(values) -> dict[str, float]:
    return {a: float(v) for a, v in zip(ATTRIBUTE_NAMES, np.asarray(values))}


def _linknet_row(report: dict) -> dict:
    return {k: report[k] for k in ("accuracies", "balanced_accuracies", "train_loss", "val_loss")}


def _install(src: Path, dst: Path) -> None:
    """Copies the built bundle into ``dst``, replacing everything but a ``generator/`` with the same weights."""
    keep_generator = (dst / "generator" / "params.npz").exists() and (
        params_digest(dst / "generator" / "params.npz") == params_digest(src / "generator" / "params.npz"))
    dst.mkdir(parents=True, exist_ok=True)
    for entry in dst.iterdir():
        if not (keep_generator and entry.name == "generator"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for entry in src.iterdir():
        if entry.name == "supervision" or (keep_generator and entry.name == "generator"):
            continue
        (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, dst / entry.name)
    print(f"bundle installed in {dst}" + (" (generator/ kept: same weights)" if keep_generator else ""), flush=True)


if __name__ == "__main__":
    main()

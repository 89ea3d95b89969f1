"""Builds the demo bundle (``demo/bundle``) and the example photographs (``examples/``) from a trained generator.

    python tools/build_demo.py --run-dir runs/lfw64s   # after train_gan --config configs/lfw_stylegan2.py:small

Steps, each with the project's own tools:
  1. convert the offline face models (``../shared/data/face_models``) with ``ports.tfjs``;
  2. calibrate the Young threshold on LFW TRAINING photographs (median expected age, so the attribute splits
     the domain in half; Male and Smiling keep the networks' own 0.5 rules), with the whole 64x64 frame as the
     face crop (the training crop is already tight on the face);
  3. ``build_bundle``: the run's exported G_ema, faceres identity, faceres+emotion descriptor, w_avg from
     50,000 mapped z;
  4. ``magec_jax.linknet`` with ``configs/linknet_demo.py``: LinkNet, InterFaceGAN boundaries and GANSpace,
     then the sample cache is deleted (it is rebuilt on demand);
  5. ``examples/``: one photograph each of 8 HELD-OUT people (never seen in training), as the central crop
     the generator was trained on, saved as PNG (``tools/heldout_faces.py``).
The run's config (resolution, crop, held-out fraction) is read from ``RUN_DIR/config.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from magec_jax.bundle import build_bundle
from magec_jax.models.face_attributes import calibrate_thresholds
from magec_jax.supervision import job as supervision
from magec_jax.training import data as lfw
from magec_jax.weights import load_converted, save_converted
from heldout_faces import write_portraits  # tools/, this script's folder
from ports.tfjs import convert_emotion, convert_faceres

REPO = Path(__file__).resolve().parents[1]
NUM_EXAMPLES = 8
NUM_CALIBRATION = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "lfw64s")
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("MAGEC_SHARED", REPO.parent / "shared")))
    parser.add_argument("--out", type=Path, default=REPO / "demo")
    parser.add_argument("--examples", type=Path, default=REPO / "examples")
    args = parser.parse_args()
    run = json.loads((args.run_dir / "config.json").read_text())
    resolution, crop, fraction = int(run["resolution"]), int(run["crop"]), float(run["heldout_fraction"])
    source = Path(run["data"])
    paths = lfw.list_source(source)
    train_idx, _ = lfw.split_by_person(paths, fraction)

    with tempfile.TemporaryDirectory() as tmp:
        models = args.shared / "data" / "face_models"
        faceres = save_converted(Path(tmp) / "faceres", convert_faceres(models / "faceres.json"))
        emotion = save_converted(Path(tmp) / "emotion", convert_emotion(models / "emotion.json"))
        calib_paths = [paths[i] for i in train_idx[:: max(1, len(train_idx) // NUM_CALIBRATION)]]
        calib = lfw.decode_source(source, calib_paths, resolution, crop).astype(np.float32) / 127.5 - 1.0
        thresholds = calibrate_thresholds(load_converted(faceres).variables, calib, box=None)
        print(f"calibrated on {len(calib_paths)} training photographs: {thresholds}", flush=True)
        bundle = build_bundle(
            args.out / "bundle",
            generator=args.run_dir / "generator",
            identity=dict(kind="faceres", path=faceres, face_box=None),
            descriptor=dict(kind="face_attributes", faceres=faceres, emotion=emotion,
                            thresholds=dataclasses.asdict(thresholds), face_box=None),
            overwrite=True,
        )
    config = _load_config(REPO / "configs" / "linknet_demo.py")
    config.bundle = str(bundle.path)
    summary = supervision.run(config)
    shutil.rmtree(bundle.path / "supervision", ignore_errors=True)
    print(json.dumps({k: v for k, v in summary.items() if k != "rendered"}, indent=2, default=str), flush=True)

    chosen = write_portraits(source, args.examples, NUM_EXAMPLES, crop=crop, fraction=fraction)
    print(f"examples: {', '.join(Path(p).stem for p in chosen)}", flush=True)


def _load_config(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("linknet_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


if __name__ == "__main__":
    main()

"""Benchmark: face detection + 468 landmarks per 1024x1024 photograph, amortised over a batch.

    python benchmarks/faces.py [--batch 32] [--repeats 3] [--configs default refine bfloat16]

Photographs: the 26 CelebA-HQ faces of ``../shared/data/celeba_hq`` (1024x1024 JPEG, one face each), cycled to
``--batch``. Each configuration of :class:`magec_jax.faces.detect.FaceDetector` is run once to compile
(reported as ``first_call_s``), then timed ``repeats`` times on the whole batch; the figure is the median,
per photograph. The stages are then timed apart, as ``detect`` runs them: the detector inputs (letterbox and
resize on the host), the jitted BlazeFace + decoding + NMS call, the crops (host, Pillow), the jitted FaceMesh
call (twice with ``refine``). The issue's goal is detection + landmarks + the alignment warp under 0.25 s per
photograph on the 2-core CPU; the warp is timed by the alignment's own benchmark. On a shared CPU the figures
move with the load, which is recorded (``load_avg_1m``) with the CPU model. Results go to
``benchmarks/results/faces.json`` and are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from magec_jax.faces import detect  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "faces.json"
CONFIGS = {
    "default": detect.DetectorConfig(),
    "refine": detect.DetectorConfig(refine=True),
    "bfloat16": detect.DetectorConfig(dtype="bfloat16"),
}


def _shared() -> Path:
    env = os.environ.get("MAGEC_SHARED")
    return Path(env) if env else REPO.parent / "shared"


def _photos(batch: int) -> list[np.ndarray]:
    files = sorted((_shared() / "data" / "celeba_hq").glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no CelebA-HQ photographs under {_shared() / 'data' / 'celeba_hq'}")
    return [np.asarray(Image.open(files[i % len(files)]).convert("RGB")) for i in range(batch)]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _median(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``repeats`` calls, after one untimed call (compilation)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _seconds(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _stages(detector: detect.FaceDetector, photos: list[np.ndarray], repeats: int) -> dict[str, float]:
    """Seconds per batch of each stage of ``FaceDetector.detect``, run as it runs them."""
    cfg = detector.config
    prepared = [detect._detector_input(p, cfg.squash) for p in photos]
    pixels = np.stack([x for x, _, _ in prepared])

    def blaze():
        return detect._detect_step(detector.blazeface_variables, pixels, max_faces=cfg.max_faces,
                                   score_threshold=cfg.score_threshold, iou_threshold=cfg.iou_threshold,
                                   dtype=cfg.dtype)

    found = detector.detect(photos)
    owners = [i for i, faces in enumerate(found) for _ in faces]
    crops = [face.crop for faces in found for face in faces]
    crop_pixels = np.stack([detect._crop_pixels(photos[i], c) for i, c in zip(owners, crops)])
    padded = detect._pad_batch(crop_pixels, detect._bucket(len(crop_pixels)))
    passes = 2 if cfg.refine else 1
    return {
        "detector_input_s": _median(lambda: [detect._detector_input(p, cfg.squash) for p in photos], repeats),
        "blazeface_nms_s": _median(blaze, repeats),
        "crops_s": passes * _median(lambda: [detect._crop_pixels(photos[i], c) for i, c in zip(owners, crops)],
                                    repeats),
        "facemesh_s": passes * _median(
            lambda: detect._mesh_step(detector.facemesh_variables, padded, dtype=cfg.dtype), repeats),
        "crops_per_facemesh_call": len(crop_pixels),
    }


def bench(name: str, detector: detect.FaceDetector, photos: list[np.ndarray], repeats: int) -> dict:
    t = time.perf_counter()
    faces = detector.detect(photos)
    first = time.perf_counter() - t
    total = statistics.median(_seconds(lambda: detector.detect(photos)) for _ in range(repeats))
    row = {"config": name, "batch": len(photos), "size": list(photos[0].shape[:2]), "seconds_per_batch": total,
           "seconds_per_photo": total / len(photos), "first_call_s": first,
           "faces_found": sum(len(f) for f in faces), "settings": dataclasses.asdict(detector.config)}
    stages = _stages(detector, photos, repeats)
    row["stages_per_photo_s"] = {k: v / len(photos) for k, v in stages.items() if k.endswith("_s")}
    row["crops_per_facemesh_call"] = stages["crops_per_facemesh_call"]
    print(f"{name:9s} batch {len(photos)}: {total / len(photos) * 1e3:7.1f} ms/photo  (first call {first:5.1f} s; "
          + ", ".join(f"{k[:-2]} {v * 1e3:.1f}" for k, v in row["stages_per_photo_s"].items()) + " ms/photo)",
          flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    photos = _photos(args.batch)
    base = detect.FaceDetector.load()
    rows = [bench(name, dataclasses.replace(base, config=CONFIGS[name]), photos, args.repeats)
            for name in args.configs]
    result = {
        "benchmark": "faces",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "platform": platform.platform(),
        "jax": jax.__version__,
        "repeats": args.repeats,
        "goal": "detection + landmarks + alignment warp < 0.25 s per 1024x1024 photograph, batch 32, 2-core CPU",
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

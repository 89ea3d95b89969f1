"""Benchmark: the warp part of photograph -> aligned crops -> pasted back, on batches of 1024x1024 photographs.

    python benchmarks/align.py [--batch 32] [--repeats 2] [--threads 2]

Each batch cycles through the 12 face photographs of ``../shared/fixtures/face_landmarks`` (15 faces, with the
``ffhq_align`` fixture's landmarks), placed on a 1024x1024 grey canvas, in two layouts:

* ``scene``: each photograph at its own size (faces of 80-540 px, every quad inside the canvas);
* ``portrait``: each scaled (Lanczos) to fill the canvas (faces of 160-1070 px; the CelebA-HQ and LFW quads
  leave the photograph, so NVIDIA's blurred padding runs, over a padded crop of up to about 1650 px).

Timed per photograph (all its faces), amortised over the batch, best of ``--repeats``, as wall and process CPU
seconds:

* ``ffhq1024_adaptive``: ``align.warp`` to 1024 at ``adaptive_transform_size`` (what a job should use);
* ``ffhq256_adaptive``, ``ffhq64_adaptive``: the same at 256 and 64 (the demo generator's size);
* ``ffhq1024_nvidia``: NVIDIA's transform size 4096, on the first 4 photographs only (it is slow);
* ``paste1024``: ``paste.paste_back`` of the 1024 crops into the photograph;
* each, but the NVIDIA one, also over ``--threads`` worker threads (Pillow and numpy release the GIL).

The issue's goal is detection + landmarks + warp under 0.25 s per photograph over a batch of 32 on the 2-core
CPU; this measures the warp. Results go to ``benchmarks/results/align.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from magec_jax.faces import align, paste
from magec_jax.images import atomic_write_json

REPO = Path(__file__).resolve().parents[1]

RESULTS = REPO / "benchmarks" / "results" / "align.json"
SIZE = 1024


def _shared() -> Path:
    env = os.environ.get("MAGEC_SHARED")
    return Path(env) if env else REPO.parent / "shared"


def load_batch(batch: int, layout: str) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """``batch`` photographs (1024x1024 uint8) with their faces' four points, cycling through the fixture's
    photographs placed on a grey canvas: ``portrait`` scales each to fill the canvas (Lanczos), ``scene`` keeps
    its own size."""
    photos = np.load(_shared() / "fixtures" / "face_landmarks" / "cases.npz")
    ffhq = np.load(_shared() / "fixtures" / "ffhq_align" / "cases.npz")
    faces: dict[str, list[np.ndarray]] = {}
    for key in sorted({k.rsplit("/", 1)[0] for k in ffhq.files}):
        faces.setdefault(key.split("/")[0], []).append(align.points_from_landmarks68(ffhq[key + "/landmarks68"]))
    placed = []
    for name, points in faces.items():
        photo = photos["image/" + name]
        h, w = photo.shape[:2]
        scale = SIZE / max(h, w) if layout == "portrait" else 1.0
        nw, nh = round(w * scale), round(h * scale)
        canvas = np.full((SIZE, SIZE, 3), 128, np.uint8)
        left, top = (SIZE - nw) // 2, (SIZE - nh) // 2
        canvas[top:top + nh, left:left + nw] = np.asarray(Image.fromarray(photo).resize((nw, nh), Image.LANCZOS))
        # Pixel centres at integers: continuous (p + 0.5) scales, then shifts.
        placed.append((canvas, [(p + 0.5) * [nw / w, nh / h] - 0.5 + [left, top] for p in points]))
    return [placed[i % len(placed)] for i in range(batch)]


def _align_photo(item, size: int, transform: str):
    photo, points = item
    crops = []
    for p in points:
        a = align.Alignment.ffhq(p, size)
        t = 4 * size if transform == "nvidia" else align.adaptive_transform_size(a)
        crops.append((align.warp(photo, a, t), a))
    return crops


def _timed(fn, items, repeats: int, threads: int = 1) -> dict[str, float]:
    """Best wall and process CPU seconds per item over ``repeats`` passes (CPU time is less disturbed by other
    processes on a shared machine; with one thread it is what the wall time would be on a quiet one)."""
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        if threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(fn, items))
        else:
            for item in items:
                fn(item)
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return {"wall": round(wall / len(items), 4), "cpu": round(cpu / len(items), 4)}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def run_layout(layout: str, args: argparse.Namespace) -> dict:
    """The timings of one batch layout."""
    items = load_batch(args.batch, layout)
    quads = [align.ffhq_quad(p) for _, pts in items for p in pts]
    sides = [float(np.hypot(*(q[3] - q[0]))) for q in quads]
    steps = {}
    for name, size, transform in [("ffhq1024_adaptive", 1024, "adaptive"), ("ffhq256_adaptive", 256, "adaptive"),
                                  ("ffhq64_adaptive", 64, "adaptive")]:
        fn = lambda item, s=size, t=transform: _align_photo(item, s, t)  # noqa: E731
        steps[name] = {"s_per_photo": _timed(fn, items, args.repeats),
                       f"s_per_photo_{args.threads}_threads": _timed(fn, items, args.repeats, args.threads)}
    nvidia = items[:4]
    steps["ffhq1024_nvidia"] = {"s_per_photo": _timed(lambda item: _align_photo(item, 1024, "nvidia"), nvidia, 1),
                                "photos": len(nvidia)}
    pasted = [(photo, _align_photo((photo, pts), 1024, "adaptive")) for photo, pts in items]
    steps["paste1024"] = {"s_per_photo": _timed(lambda item: paste.paste_back(*item), pasted, args.repeats),
                          f"s_per_photo_{args.threads}_threads":
                              _timed(lambda item: paste.paste_back(*item), pasted, args.repeats, args.threads)}
    return {
        "photos": len(items), "photo_size": SIZE, "faces": len(quads),
        "faces_whose_quad_leaves_the_photo": sum(bool(q.min() < 0 or q.max() > SIZE - 1) for q in quads),
        "quad_side_px": {"min": round(min(sides)), "median": round(float(np.median(sides))), "max": round(max(sides))},
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    layouts = {layout: run_layout(layout, args) for layout in ("scene", "portrait")}
    result = {
        "benchmark": "benchmarks/align.py",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu": _cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__, "pillow": PIL.__version__,
                    "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2)},
        "repeats": args.repeats,
        "layouts": layouts,
    }
    atomic_write_json(RESULTS, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

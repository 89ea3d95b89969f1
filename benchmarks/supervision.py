"""Supervision sampling throughput: samples/s of the jitted sample -> map -> render -> label call.

    python benchmarks/supervision.py                      # the demo bundle, batches 1 8 32 64, ~3 min on 2 cores
    python benchmarks/supervision.py --bundle weights/ffhq_bundle --batches 8 --min-seconds 20

Times :func:`magec_jax.supervision.samples.labeller`, the ONE jitted call per batch that the supervision job
(``python -m magec_jax.linknet``) makes: per-layer-mixed z drawn from per-sample keys, mapped, rendered with
const noise, clipped, and labelled by what the job stores for the bundle's F (the faceres+emotion scores
for a face-attribute bundle, else F's logits). Also times the two halves alone (sampling + synthesis;
the label source on ready images) to show where the time goes. Each setting is compiled once (compile time
reported, not counted), run once to warm up, then timed over at least ``--min-iters`` calls and
``--min-seconds``. Wall time and process CPU time are both reported: the CPU is shared, so wall figures are
noisy and CPU seconds per sample are the steadier figure.

Results are printed and written to ``benchmarks/results/supervision.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "supervision.json"

from harness import save_result, time_compiled  # noqa: E402

from magec_jax.bundle import load_bundle  # noqa: E402
from magec_jax.bundle import label_source  # noqa: E402
from magec_jax.supervision.samples import labeller  # noqa: E402


def _images(variables, images):
    """A "label source" that returns the images themselves: the sampling + synthesis half alone."""
    del variables
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "demo" / "bundle")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--min-iters", type=int, default=2)
    parser.add_argument("--min-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    t0 = time.perf_counter()
    bundle = load_bundle(args.bundle)
    cfg, gen_variables = bundle.generator
    labels = label_source(bundle, bundle.descriptor())
    w_avg, psi, key = jnp.asarray(bundle.w_avg()), jnp.float32(1.0), jax.random.key(0)
    render = labeller(cfg, _images, True)
    label_only = jax.jit(labels.apply)
    rows = []
    for batch in args.batches:
        indices = jnp.arange(batch, dtype=jnp.int32)
        render_args = (gen_variables, None, key, indices, w_avg, psi)
        _, images = render(*render_args)
        stages = (
            ("sample+render+label", labeller(cfg, labels.apply, True), (gen_variables, labels.variables, key, indices, w_avg, psi)),
            ("sample+render", render, render_args),
            ("label", label_only, (labels.variables, images)),
        )
        for stage, fn, fn_args in stages:
            t = time_compiled(fn, fn_args, min_iters=args.min_iters, min_seconds=args.min_seconds)
            row = {
                "stage": stage, "batch": batch,
                "samples_per_s": round(batch / t["wall_s_per_call"], 2),
                "cpu_s_per_sample": round(t["cpu_s_per_call"] / batch, 4),
                **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in t.items()},
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    save_result(args.out, (f"supervision samples of {args.bundle.name} ({cfg.img_resolution}x{cfg.img_resolution} G, "
                      f"labels: {labels.name} {labels.spec.get('outputs')}), per-layer-mixed, float32, one jitted call per batch"), rows, t0)


if __name__ == "__main__":
    main()

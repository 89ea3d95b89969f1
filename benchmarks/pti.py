"""Pivotal tuning's cost: tuned images per hour, memory and bytes per image, full weights against low-rank deltas,
at 64 px on the demo bundle and at 1024 px on config-f networks with random weights.

    python benchmarks/pti.py                                   # both, ~25 min on 2 cores
    python benchmarks/pti.py --skip-1024 --steps 2 --repeats 1 --out /tmp/dry.json   # quick check

Per (networks, delta kind, batch): the step's compile seconds; the fastest of ``--repeats`` windows of
``--steps`` steps (the platform's loop: one dispatched call per step on CPU), in wall and process CPU seconds per
image-step; tuned images per hour at PTI's 350 steps (no early stop: an upper bound of the time); the compiled
step's memory (XLA's arguments + temporaries + outputs, ``memory_analysis()``) and, from two batch sizes, the
memory each further image adds; the delta's bytes per image on disk. The best batch is the measured one with
the most images per hour. Results are printed and written to ``benchmarks/results/pti.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import save_result  # noqa: E402
from networks import paper_networks  # noqa: E402

from magec_jax import load_bundle  # noqa: E402
from magec_jax.inversion.pti import PTISettings, Tuner  # noqa: E402
from magec_jax.models.deltas import DeltaSpec, delta_bytes, init_delta  # noqa: E402
from magec_jax.models.stylegan2 import FROZEN  # noqa: E402

PTI_STEPS = 350  # the official max_pti_steps
KINDS = {
    "full": DeltaSpec(),
    "lowrank r4 (every group)": DeltaSpec("lowrank", rank=4),  # the delta chosen on the validation people
}


def _memory_bytes(fn) -> int | None:
    memory = fn.func.memory_analysis()
    if memory is None:
        return None
    return int(memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes)


def time_tuning(nets, spec: DeltaSpec, loop: str, batch: int, steps: int, repeats: int) -> dict:
    """Compile seconds, the fastest window's wall and CPU seconds per image-step, and the step's memory."""
    tuner = Tuner(nets, PTISettings(steps=PTI_STEPS, lpips_threshold=0.0, delta=spec))
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (batch, nets.resolution, nets.resolution, 3)).astype(np.float32)
    pivots = np.broadcast_to(np.asarray(nets.w_avg), (batch, nets.num_ws, nets.w_dim)).copy()
    targets = jax.block_until_ready(tuner.prepare(images, pivots))
    state = tuner.init(batch)
    numbers = np.arange(steps, dtype=np.int32) if loop == "scan" else np.int32(0)
    t0 = time.perf_counter()
    step = tuner.compile_step(state, targets, numbers)
    compile_s = time.perf_counter() - t0
    state = jax.block_until_ready(step(state, targets, numbers))  # warm-up
    windows = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        if loop == "scan":
            state = step(state, targets, numbers)
        else:
            for i in range(steps):
                state = step(state, targets, np.int32(i))
        jax.block_until_ready(state)
        windows.append((time.perf_counter() - t0, time.process_time() - c0))
    wall, cpu = (min(w[i] for w in windows) / steps / batch for i in (0, 1))
    return dict(compile_s=round(compile_s, 1), s_per_image_step=round(wall, 4), cpu_s_per_image_step=round(cpu, 4),
                images_per_hour_350_steps=round(3600 / (PTI_STEPS * wall), 2), step_memory_bytes=_memory_bytes(step),
                windows_s=[round(w[0], 3) for w in windows])


def measure(nets, name: str, batches: list[int], steps: int, repeats: int, loops: list[str]) -> list[dict]:
    """One row per delta kind, loop and batch size; per (kind, loop) the memory an extra image adds and the best
    batch."""
    rows = []
    base = {k: v for k, v in nets.generator.items() if k != FROZEN}
    for (kind, spec), loop in itertools.product(KINDS.items(), loops):
        per_batch = {}
        for batch in batches:
            per_batch[batch] = row = dict(networks=name, resolution=nets.resolution, delta=kind, loop=loop,
                                          batch=batch, delta_bytes_per_image=delta_bytes(init_delta(base, spec,
                                                                                                    jax.random.key(0))),
                                          **time_tuning(nets, spec, loop, batch, steps, repeats))
            print(row, flush=True)
        low, high = min(per_batch), max(per_batch)
        if high > low and per_batch[low]["step_memory_bytes"] is not None:
            extra = (per_batch[high]["step_memory_bytes"] - per_batch[low]["step_memory_bytes"]) / (high - low)
            for row in per_batch.values():
                row["memory_bytes_per_extra_image"] = int(extra)
        max(per_batch.values(), key=lambda r: r["images_per_hour_350_steps"])["best_batch"] = True
        rows += per_batch.values()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "demo" / "bundle")
    parser.add_argument("--batches", default="1,4,8", help="batch sizes at 64 px")
    parser.add_argument("--batches-1024", default="1,2", help="batch sizes at 1024 px")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--loops", default="dispatch,scan", help="loops at 64 px (1024: dispatch)")
    parser.add_argument("--skip-1024", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pti.json")
    args = parser.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")  # as the job runs
    t0 = time.perf_counter()
    parse = lambda text: [int(b) for b in text.split(",")]  # noqa: E731
    rows = measure(load_bundle(args.bundle).networks(), "demo bundle", parse(args.batches), args.steps, args.repeats,
                   args.loops.split(","))
    if not args.skip_1024:
        paper = paper_networks(1024, 32768)
        rows += measure(dataclasses.replace(paper, identity=None, descriptor=None, linknet=None, directions=None,
                                            compute_variant=None),
                        "config-f 1024, random weights", parse(args.batches_1024), max(1, args.steps // 2),
                        args.repeats, ["dispatch"])
    save_result(args.out, "pivotal tuning: seconds, memory and bytes per image (full and low-rank deltas)", rows, t0)


if __name__ == "__main__":
    main()

"""The engine's step loop on a bundle's own networks: one call per step (``dispatch``) against a ``lax.scan``
over a chunk of steps (``scan``), by batch size.

    python benchmarks/loop.py                                  # the demo bundle, batches 1 8 16, ~4 min on 2 cores
    python benchmarks/loop.py --bundle weights/ffhq_bundle --batches 1 4 --steps 5
    python benchmarks/loop.py --paper-resolution 256 --batches 1 4        # config-f, random weights (networks.py)

``ComputeOptions.loop`` decides how the engine runs the steps between two progress reports. Its ``auto`` value
is chosen per platform (``magec_jax/inversion/settings.py``, ``AUTO``) from measurements on config-f networks;
this script measures the choice on the networks a job actually runs: the bundle's generator, LPIPS, identity
network, descriptor, LinkNet and boundaries (or, with ``--paper-resolution``, ``invert.py``'s config-f networks
with random weights), with the paper's MAGEC loss weights (phase 2). Per (batch, loop):
compile seconds, then the fastest of ``--repeats`` windows of ``--steps`` steps after one warm-up window, as
wall and process CPU seconds per step and per image-step. The two loops alternate window by window, so that a
change of load on a shared machine hits both. Results are printed and written to
``benchmarks/results/loop_<bundle>.json`` (``loop_paper<resolution>.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import save_result  # noqa: E402
from networks import paper_networks  # noqa: E402

from magec_jax import Engine, load_bundle, protocol_settings  # noqa: E402
from magec_jax.inversion.settings import ComputeOptions, Phase  # noqa: E402
from ports.loss_nets import packaged_lpips  # noqa: E402

LOOPS = ("dispatch", "scan")


def _engines(nets, batch: int, steps: int) -> dict:
    """Per loop: the engine, its prepared targets and initial state, and its compile time."""
    base = protocol_settings("magec")
    weights = dict(base.phases[-1].weights)
    out = {}
    images = np.random.default_rng(0).uniform(-1, 1, (batch, nets.resolution, nets.resolution, 3)).astype(np.float32)
    for loop in LOOPS:
        compute = dataclasses.replace(ComputeOptions().resolved(), loop=loop)
        settings = dataclasses.replace(base, phases=(Phase(10 * steps, weights),), chunk_steps=steps, compute=compute)
        engine = Engine(nets, settings)
        targets = jax.block_until_ready(engine.prepare(images))
        state = engine.init(batch)
        window = np.arange(steps, dtype=np.int32) if loop == "scan" else None
        t0 = time.perf_counter()
        args = (state, targets, window if loop == "scan" else 0)
        engine.compile("step", *args)
        out[loop] = dict(engine=engine, targets=targets, state=state, window=window,
                         compile_s=time.perf_counter() - t0)
    return out


def _run_window(run: dict, steps: int) -> tuple[float, float]:
    """Runs one window of ``steps`` steps; returns (wall, CPU) seconds."""
    engine, targets, state = run["engine"], run["targets"], run["state"]
    t0, c0 = time.perf_counter(), time.process_time()
    if run["window"] is not None:
        state = engine.step(state, targets, run["window"])
    else:
        for step in range(steps):
            state = engine.step(state, targets, step)
    run["state"] = jax.block_until_ready(state)
    return time.perf_counter() - t0, time.process_time() - c0


def measure(nets, batch: int, steps: int, repeats: int) -> list[dict]:
    """The rows of one batch size: one per loop."""
    runs = _engines(nets, batch, steps)
    for run in runs.values():
        _run_window(run, steps)  # warm-up
    timings = {loop: [] for loop in LOOPS}
    for _ in range(repeats):
        for loop in LOOPS:
            timings[loop].append(_run_window(runs[loop], steps))
    rows = []
    for loop in LOOPS:
        wall = min(t[0] for t in timings[loop])
        cpu = min(t[1] for t in timings[loop])
        rows.append(dict(batch=batch, loop=loop, compile_s=round(runs[loop]["compile_s"], 2),
                         s_per_step=round(wall / steps, 4), s_per_image_step=round(wall / steps / batch, 4),
                         cpu_s_per_image_step=round(cpu / steps / batch, 4),
                         all_windows_s=[round(t[0], 3) for t in timings[loop]]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "demo" / "bundle")
    parser.add_argument("--paper-resolution", type=int, default=None,
                        help="config-f networks with random weights at this resolution instead of a bundle")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--steps", type=int, default=4, help="steps per timed window (the scan's length)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/loop_<name>.json")
    args = parser.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")  # as the inversion job runs
    if args.paper_resolution:
        res = args.paper_resolution
        nets = paper_networks(res, 16384 if res <= 256 else 32768, lpips_variables=packaged_lpips())
        name = f"paper{res}"
    else:
        nets = load_bundle(args.bundle).networks()
        name = f"{args.bundle.resolve().parent.name}_{args.bundle.resolve().name}"
    out = args.out or REPO / "benchmarks" / "results" / f"loop_{name}.json"
    t0 = time.perf_counter()
    rows = []
    for batch in args.batches:
        for row in measure(nets, batch, args.steps, args.repeats):
            print(row, flush=True)
            rows.append(row)
    save_result(out, f"engine step loop, dispatch vs scan, MAGEC phase-2 weights, {name} "
                     f"({nets.resolution}x{nets.resolution})", rows, t0)


if __name__ == "__main__":
    main()

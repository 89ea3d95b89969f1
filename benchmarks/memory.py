"""CPU memory of an inversion step at 1024, with and without rematerialisation of the generator's layers.

    python benchmarks/memory.py                       # remat off/on x batch 1, 2: about 10 min on 2 cores
    python benchmarks/memory.py --batches 1 2 4 --resolution 1024

Each (remat, batch) runs in its own process, so that one configuration's memory never counts in another's:
random config-f weights and the paper's full loss (MSE + LPIPS + ID + MAGEC, ``networks.py``), the engine's
step compiled, then two steps run. Per process it records the resident memory with the networks loaded and the
step compiled, the peak resident memory while the steps run (the kernel's high-water mark, reset after
compiling: ``/proc/self/clear_refs``), the peak while compiling, and XLA's own account of the executable
(``memory_analysis``). The memory per image is the slope of the step peak between the smallest and the largest
batch. Results: ``benchmarks/results/memory.json``, with the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import machine_info  # noqa: E402
from networks import paper_networks  # noqa: E402

from magec_jax.images import atomic_write_json  # noqa: E402
from magec_jax.inversion.engine import Engine  # noqa: E402
from magec_jax.inversion.settings import ComputeOptions, InversionSettings  # noqa: E402

GIB = 2**30


def _status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(resolution: int, batch: int, remat: str, steps: int) -> dict:
    """One configuration, in this process (the child)."""
    compute = ComputeOptions(remat=remat).resolved()
    nets = paper_networks(resolution, 32768 if resolution > 256 else 16384, compute=compute.networks)
    engine = Engine(nets, InversionSettings(compute=compute))  # the MAGEC protocol's loss
    images = jax.random.uniform(jax.random.key(1), (batch, resolution, resolution, 3), minval=-1.0, maxval=1.0)
    targets = jax.block_until_ready(engine.prepare(images))
    state = engine.init(batch)
    t = time.perf_counter()
    compiled = engine.compile("step", state, targets, 0)
    compile_s = time.perf_counter() - t
    compile_peak = _status_bytes("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current resident size
    before = _status_bytes("VmRSS")
    t = time.perf_counter()
    for step in range(steps):
        state = compiled(state, targets, np.int32(step))
    jax.block_until_ready(state)
    analysis = compiled.func.memory_analysis()
    return dict(
        resolution=resolution, batch=batch, remat=remat, options=dataclasses.asdict(compute),
        rss_before_steps_gib=before / GIB, step_peak_rss_gib=_status_bytes("VmHWM") / GIB,
        compile_peak_rss_gib=compile_peak / GIB, compile_s=compile_s, seconds_per_step=(time.perf_counter() - t) / steps,
        xla_temp_gib=analysis.temp_size_in_bytes / GIB, xla_argument_gib=analysis.argument_size_in_bytes / GIB,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("REMAT", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "memory.json")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.resolution, int(args.child[1]), args.child[0], args.steps)))
        return
    record = dict(machine=machine_info(), resolution=args.resolution, runs=[], per_image_gib={})
    for remat in ("off", "on"):
        for batch in args.batches:
            cmd = [sys.executable, __file__, "--resolution", str(args.resolution), "--steps", str(args.steps),
                   "--child", remat, str(batch)]
            run = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            run["load_average"] = list(os.getloadavg())
            record["runs"].append(run)
            print(json.dumps(run), flush=True)
            atomic_write_json(args.out, record)
        rows = sorted((r["batch"], r["step_peak_rss_gib"]) for r in record["runs"] if r["remat"] == remat)
        if len(rows) > 1:
            (b0, m0), (b1, m1) = rows[0], rows[-1]
            record["per_image_gib"][f"remat_{remat}"] = (m1 - m0) / (b1 - b0)
        atomic_write_json(args.out, record)
    print(json.dumps(record["per_image_gib"]))


if __name__ == "__main__":
    main()

"""Inversion speed: seconds per image-step vs batch size, compile time, peak memory, MAGEC overhead.

    python benchmarks/invert.py                                  # 256 and 1024, CPU-sized batches
    python benchmarks/invert.py --resolutions 1024 --batches 1 8 16 32 --precision tf32  # a GPU (device_suite.py
                                                                 # measures every option there)

Networks: a randomly initialised config-f StyleGAN2 (channel_max 512, w_dim 512; channel_base 16384 at 256 and
below, NVIDIA's "paper256" setting whose 30 GFLOP forward PERFORMANCE.md's 256 figures assume, and 32768 above,
the FFHQ-1024 config-f; ``--channel-base`` overrides), the real LPIPS-VGG16 weights, and randomly initialised
IR-SE50, 40-way ResNet-50 descriptor and LinkNet with random unit directions (``networks.py``; weights do not
change the cost), run with the platform's default compute options (``--precision`` overrides one). Three step
variants per (resolution, batch):

  * ``mse_lpips``: MSE + LPIPS on W+ (what NVIDIA's projector computes; PERFORMANCE.md's comparison),
  * ``no_magec``: MSE + LPIPS + ID,
  * ``magec``:    MSE + LPIPS + ID + MAGEC (the paper's loss),

each timed over ``--steps`` steps (one compiled call each, as the engine runs them) after a warm-up. The MAGEC
overhead is reported two ways: the step-time difference ``magec - no_magec`` (noisy: it is small), and the
time of the MAGEC term alone (value and gradient of the vmapped loss for the batch) as a fraction of the
``magec`` step. Results are printed and written as JSON (``--out``) with the machine (CPU model, vector extensions) and the
load average after each run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import machine_info  # noqa: E402
from networks import paper_networks  # noqa: E402

from magec_jax.images import atomic_write_json  # noqa: E402
from magec_jax.inversion.engine import Engine  # noqa: E402
from magec_jax.inversion.magec_loss import magec_loss  # noqa: E402
from magec_jax.inversion.networks import Networks  # noqa: E402
from magec_jax.inversion.settings import ComputeOptions, InversionSettings, Phase  # noqa: E402
from ports.loss_nets import packaged_lpips  # noqa: E402

VARIANTS = {
    "mse_lpips": dict(mse=0.5, lpips=0.5),
    "no_magec": dict(mse=0.5, lpips=0.5, id=3e-4),
    "magec": dict(mse=0.5, lpips=0.5, id=3e-4, magec=3e-4),
}


def default_channel_base(resolution: int) -> int:
    """16384 up to 256 (NVIDIA paper256), 32768 above (FFHQ-1024 config-f)."""
    return 16384 if resolution <= 256 else 32768


def build_networks(resolution: int, channel_base: int, seed: int = 0) -> Networks:
    """Config-f generator at ``resolution`` and every loss network, random weights (real LPIPS)."""
    return paper_networks(resolution, channel_base, lpips_variables=packaged_lpips(), seed=seed)


def peak_memory_bytes() -> int:
    """Peak device memory where the backend reports it, else the process's peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_steps(nets: Networks, weights: dict, batch: int, steps: int, repeats: int, compute: ComputeOptions) -> dict:
    """Compile time and steady seconds per image-step of ``steps`` compiled steps on ``batch`` images: the
    fastest of ``repeats`` windows, wall clock and this process's CPU seconds (steadier on a shared machine)."""
    settings = InversionSettings(phases=(Phase(steps, **weights),), chunk_steps=steps, compute=compute)
    engine = Engine(nets, settings)
    images = jax.random.uniform(jax.random.key(1), (batch, nets.resolution, nets.resolution, 3), minval=-1, maxval=1)
    images = jax.device_put(images, engine.data_sharding)
    targets = jax.block_until_ready(engine.prepare(images))
    state = engine.init(batch)
    t0 = time.perf_counter()
    compiled = engine.compile("step", state, targets, 0)
    compile_s = time.perf_counter() - t0

    def run_steps(st):
        for step in range(steps):
            st = compiled(st, targets, np.int32(step))
        return jax.block_until_ready(st)

    state = run_steps(state)  # warm-up
    times, cpu_times = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        state = run_steps(state)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    best = min(times)
    return dict(compile_s=compile_s, s_per_image_step=best / (steps * batch), s_per_step=best / steps,
                images_steps_per_s=steps * batch / best, cpu_s_per_image_step=min(cpu_times) / (steps * batch))


def time_magec_term(nets: Networks, batch: int, repeats: int) -> float:
    """Seconds for value and gradient of the vmapped MAGEC loss of a batch (the term alone)."""
    k = nets.directions.shape[0]
    w = jax.random.normal(jax.random.key(2), (batch, nets.num_ws, nets.w_dim))
    targets = (jax.random.uniform(jax.random.key(3), (batch, k)) > 0.5).astype(jnp.float32)
    fn = jax.jit(jax.vmap(jax.value_and_grad(lambda a, t: magec_loss(a, nets.linknet, t, nets.directions)),
                          in_axes=(0, 0)))
    jax.block_until_ready(fn(w, targets))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(w, targets))
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="batch sizes (default: 1 4 8 at 256, 1 2 at 1024 on CPU)")
    parser.add_argument("--steps", type=int, default=2, help="compiled steps per timed call")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--channel-base", type=int, default=None, help="generator channel_base (see above)")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "tf32", "bf16"),
                        help="compute precision (the engine's ComputeOptions; other options: the platform's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "invert.json")
    args = parser.parse_args()
    compute = ComputeOptions(precision=args.precision).resolved()
    results = dict(machine=machine_info(), compute=dataclasses.asdict(compute), steps=args.steps,
                   repeats=args.repeats, runs=[])
    for res in args.resolutions:
        base = args.channel_base or default_channel_base(res)
        nets = build_networks(res, base)
        default = [1, 4, 8] if res <= 256 else [1, 2]
        for batch in args.batches or default:
            run = dict(resolution=res, batch=batch, channel_base=base)
            for name in args.variants:
                run[name] = time_steps(nets, VARIANTS[name], batch, args.steps, args.repeats, compute)
                print(f"{res} b{batch} {name}: {run[name]['s_per_image_step']:.3f} s/image-step "
                      f"(compile {run[name]['compile_s']:.1f} s)", flush=True)
            if "magec" in run:
                term = time_magec_term(nets, batch, args.repeats)
                run["magec_term_s_per_step"] = term
                run["magec_term_fraction"] = term / run["magec"]["s_per_step"]
                if "no_magec" in run:
                    run["magec_overhead_fraction"] = (
                        run["magec"]["s_per_step"] / run["no_magec"]["s_per_step"] - 1.0
                    )
                print(f"{res} b{batch} MAGEC term alone: {term * 1e3:.2f} ms/step = "
                      f"{100 * run['magec_term_fraction']:.2f}% of a MAGEC step", flush=True)
            run["peak_memory_bytes"] = peak_memory_bytes()
            run["load_average"] = [round(x, 2) for x in os.getloadavg()]
            results["runs"].append(run)
            atomic_write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""StyleGAN2 generator throughput: forward and forward+backward (gradient w.r.t. W+) images/s.

    python benchmarks/generator.py                 # 256 and 1024, ~8 min on a 2-core CPU
    python benchmarks/generator.py --resolutions 256 --min-seconds 1

A randomly initialised config-f generator (channel_base 32768, channel_max 512, w_dim 512, float32, noise
'const') is run the way the inversion engine runs it: a per-image function ``w+ [num_ws, w_dim] -> image``
under ``jax.vmap`` and ``jax.jit``; forward+backward is ``grad(mean(image**2))`` w.r.t. W+ (the weights are
constants). Each setting is compiled once (compile time reported, not counted), run once to warm up, then
timed over at least ``--min-iters`` calls and ``--min-seconds``. Wall time and process CPU time are both
reported: other jobs share the CPU, so wall figures are noisy, and CPU seconds per image are the steadier
figure on a shared machine. ``gflop`` is the analytic forward count (multiply-adds x 2, the transposed
up-convolution counted at its input resolution, as in docs/PERFORMANCE.md).

Results are printed and written to ``benchmarks/results/generator.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from harness import save_result, time_compiled
from magec_jax.models.stylegan2 import Generator, StyleGAN2Config, init_generator

RESULTS = Path(__file__).resolve().parent / "results" / "generator.json"
# Largest batch per resolution: on a 2-core CPU one image already saturates the convolutions (images/s is
# flat in batch), and the 1024 backward needs several GiB per image of a machine shared by other jobs.
BATCHES = {256: (1, 4), 1024: (1, 2)}


def forward_gflop(cfg: StyleGAN2Config) -> float:
    """Analytic forward GFLOP of the synthesis network (3x3 convs and ToRGB; up-convs at input resolution)."""
    macs = 0
    for res in cfg.block_resolutions:
        out = cfg.channels(res)
        if res == 4:
            macs += 16 * 9 * out * out
        else:
            inp = cfg.channels(res // 2)
            macs += (res // 2) ** 2 * 9 * inp * out + res**2 * 9 * out * out
        macs += res**2 * out * cfg.img_channels
    return 2 * macs / 1e9


def bench_resolution(res: int, batches, fused_options, *, min_iters: int, min_seconds: float) -> list[dict]:
    cfg = StyleGAN2Config(img_resolution=res, channel_base=32768, channel_max=512, w_dim=512, z_dim=512)
    variables = init_generator(cfg, jax.random.key(0))
    rows = []
    for fused in fused_options:
        G = Generator(cfg, fused_modconv=fused)

        def one_image(v, w_LxD, G=G):
            return G.apply(v, w_LxD[None], method="synthesis")[0]

        forward = jax.jit(jax.vmap(one_image, in_axes=(None, 0)))
        grad = jax.jit(jax.vmap(jax.grad(lambda v, w: jnp.mean(one_image(v, w) ** 2), argnums=1), in_axes=(None, 0)))
        for batch in batches:
            wplus = jax.random.normal(jax.random.key(1), (batch, cfg.num_ws, cfg.w_dim))
            for mode, fn in (("forward", forward), ("forward+backward", grad)):
                if fused and batch > 1 and (res >= 1024 or mode == "forward+backward"):
                    continue  # vmapped per-sample kernels become a grouped conv, ~5x slower on CPU: skip the longest
                t = time_compiled(fn, (variables, wplus), min_iters=min_iters, min_seconds=min_seconds)
                row = {
                    "resolution": res, "batch": batch, "modconv": "fused" if fused else "non-fused", "mode": mode,
                    "images_per_s": round(batch / t["wall_s_per_call"], 3),
                    "cpu_s_per_image": round(t["cpu_s_per_call"] / batch, 3),
                    "forward_gflop_per_image": round(forward_gflop(cfg), 1),
                    **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in t.items()},
                }  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--min-iters", type=int, default=2)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = []
    for res in args.resolutions:
        rows += bench_resolution(
            res, BATCHES.get(res, (1,)), (False, True), min_iters=args.min_iters, min_seconds=args.min_seconds
        )
    save_result(args.out, "StyleGAN2 config-f synthesis, random weights, float32, noise const, vmap over images",
                rows, t0)


if __name__ == "__main__":
    main()

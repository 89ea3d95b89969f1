"""Inversion speed: seconds per image-step vs batch size, compile time, peak memory, MAGEC overhead.

    python benchmarks/invert.py                                  # 256 and 1024, CPU-sized batches
    python benchmarks/invert.py --resolutions 1024 --batches 1 8 16 32 --precision tensorfloat32  # a GPU

Networks: a randomly initialised config-f StyleGAN2 (channel_max 512, w_dim 512; channel_base 16384 at 256 and
below, NVIDIA's "paper256" setting whose 30 GFLOP forward PERFORMANCE.md's 256 figures assume, and 32768 above,
the FFHQ-1024 config-f; ``--channel-base`` overrides), the real LPIPS-VGG16 weights, and randomly initialised IR-SE50, 40-way ResNet-50 descriptor and LinkNet with
random unit directions (weights do not change the cost). Three step variants per (resolution, batch):

  * ``mse_lpips``: MSE + LPIPS on W+ (what NVIDIA's projector computes; PERFORMANCE.md's comparison),
  * ``no_magec``: MSE + LPIPS + ID,
  * ``magec``:    MSE + LPIPS + ID + MAGEC (the paper's loss),

each timed over ``--steps`` steps (one compiled call each, as the engine runs them) after a warm-up. The MAGEC overhead is reported two ways: the
step-time difference ``magec - no_magec`` (noisy: it is small), and the time of the MAGEC term alone
(value and gradient of the vmapped loss for the batch) as a fraction of the ``magec`` step.
Results are printed and written as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from magec_jax.bundle import noise_buffers, synthesize_fn
from magec_jax.images import atomic_write_json
from magec_jax.inversion.engine import Engine, InversionSettings, Networks, Phase
from magec_jax.inversion.magec_loss import magec_loss
from magec_jax.models import lpips as lpips_lib
from magec_jax.models import stylegan2
from magec_jax.models.irse50 import IRSE50, irse50_identity
from magec_jax.models.linknet import LinkNet, LinkNetConfig
from magec_jax.models.resnet import ResNet50, ResNetConfig, resnet_descriptor
from ports.loss_nets import packaged_lpips

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
    cfg = stylegan2.StyleGAN2Config(img_resolution=resolution, channel_base=channel_base)
    keys = jax.random.split(jax.random.key(seed), 5)
    gen = stylegan2.init_generator(cfg, keys[0])
    ir = IRSE50().init(keys[1], jnp.zeros((1, 112, 112, 3)))
    rcfg = ResNetConfig()
    res = ResNet50(rcfg.num_classes).init(keys[2], jnp.zeros((1, 224, 224, 3)))
    lcfg = LinkNetConfig(cfg.num_ws, cfg.w_dim, rcfg.num_classes)
    link = LinkNet(lcfg).init(keys[3], jnp.zeros((cfg.num_ws, cfg.w_dim)))
    dirs = jax.random.normal(keys[4], (rcfg.num_classes, cfg.w_dim))
    return Networks(
        synthesize=synthesize_fn(cfg),
        generator=gen,
        num_ws=cfg.num_ws,
        w_dim=cfg.w_dim,
        resolution=resolution,
        w_avg=jnp.zeros((cfg.w_dim,)),
        lpips=lpips_lib.lpips_distance,
        lpips_variables=packaged_lpips(),
        lpips_target=lpips_lib.lpips_target,
        lpips_to_target=lpips_lib.lpips_distance_to_target,
        noise_init=noise_buffers(cfg, gen),
        identity=irse50_identity(ir),
        descriptor=resnet_descriptor(res, rcfg.attribute_names),
        linknet=link,
        directions=dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True),
    )


def peak_memory_bytes() -> int:
    """Peak device memory where the backend reports it, else the process's peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_steps(nets: Networks, weights: dict, batch: int, steps: int, repeats: int) -> dict:
    """Compile time and steady seconds per image-step of ``steps`` compiled steps on ``batch`` images."""
    settings = InversionSettings(phases=(Phase(steps, **weights),), chunk_steps=steps)
    engine = Engine(nets, settings)
    images = jax.random.uniform(jax.random.key(1), (batch, nets.resolution, nets.resolution, 3), minval=-1, maxval=1)
    images = jax.device_put(images, engine.data_sharding)
    targets = jax.block_until_ready(engine._prepare(engine._arrays, images))
    state = engine._init(engine._arrays, batch)
    t0 = time.perf_counter()
    compiled = engine._run.lower(engine._arrays, state, targets, np.int32(0)).compile()
    compile_s = time.perf_counter() - t0

    def run_steps(st):
        for step in range(steps):
            st = compiled(engine._arrays, st, targets, np.int32(step))
        return jax.block_until_ready(st)

    state = run_steps(state)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state = run_steps(state)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return dict(compile_s=compile_s, s_per_image_step=best / (steps * batch), s_per_step=best / steps,
                images_steps_per_s=steps * batch / best)


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
    parser.add_argument("--precision", default="highest", help="jax_default_matmul_precision")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "invert.json")
    args = parser.parse_args()
    jax.config.update("jax_default_matmul_precision", args.precision)
    results = dict(device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
                   devices=jax.device_count(), cpu=platform.processor() or platform.machine(),
                   jax=jax.__version__, precision=args.precision, steps=args.steps, runs=[])
    for res in args.resolutions:
        base = args.channel_base or default_channel_base(res)
        nets = build_networks(res, base)
        default = [1, 4, 8] if res <= 256 else [1, 2]
        for batch in args.batches or default:
            run = dict(resolution=res, batch=batch, channel_base=base)
            for name in args.variants:
                run[name] = time_steps(nets, VARIANTS[name], batch, args.steps, args.repeats)
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
            results["runs"].append(run)
            atomic_write_json(args.out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

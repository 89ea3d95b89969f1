"""Where an inversion step's time goes on XLA:CPU, and which XLA:CPU flags change it.

    python benchmarks/cpu_profile.py profile --resolution 256            # per-op profile of one step
    python benchmarks/cpu_profile.py flags --resolution 256 --rounds 2   # the step under each flag set
    python benchmarks/cpu_profile.py peak                                 # the machine's attainable GFLOP/s
    python benchmarks/cpu_profile.py forms                                # one convolution, written several ways
    python benchmarks/cpu_profile.py trees --against ../baseline          # this checkout against another one

``profile`` compiles the engine's step (random config-f weights, MSE + LPIPS on W+ by default, the platform's
default compute options), traces two steps with the jax profiler and sums every XLA op's time by kind:
convolutions (with their analytic GFLOP and GFLOP/s), weight-only ops (functions of the frozen networks alone,
recomputed at every step although constant), layout copies and the rest, and by network (generator, LPIPS, ID,
the rest), from the ops' metadata. ``flags`` times the same step in one subprocess per XLA_FLAGS set,
interleaved over ``--rounds`` rounds, and keeps each set's fastest step (wall and process CPU seconds). Op
times are wall durations of ops that may run two at a time, so they add up to more than the step. ``peak``
measures what XLA:CPU attains on this machine at its best: a 4096^3 float32 matmul and a 3x3 convolution of
the size that dominates a 256 step (256 channels at 128x128, as in LPIPS-VGG16 and the generator's middle
blocks), forward and backward to the input; the fastest of ``--steps`` runs each (a step's GFLOP divided by
these is its floor on this machine). ``forms`` times the same convolution written in the ways XLA:CPU treats
differently, at the shapes of the generator's 512 and 1024 blocks: a convolution with no positive padding as it
is or padded by one and cropped, and a 1x1 convolution as a convolution or as a matrix product
(``ops.frozen_conv2d``, the convolution of constant kernels, takes the faster form of each); the fastest of ``--steps`` runs each. ``trees`` times the step of this checkout
and of each ``--against`` checkout (``git worktree add ../baseline <commit>``) in interleaved subprocesses, each
running its own tree's code, as ``flags`` does, and records each tree's commit: a change measured against the
code before it on the same machine in the same run.

Results go to ``benchmarks/results/cpu_profile_<mode>_<resolution>.json`` (``cpu_profile_<mode>.json`` for
``peak`` and ``forms``) with the machine (CPU model, vector
extensions) and the load average: other work on a shared machine slows every figure.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import math
import os
import re
import subprocess
import sys
import tempfile
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
from magec_jax.inversion.settings import InversionSettings, Phase  # noqa: E402
from magec_jax.paths import portable_path  # noqa: E402

VARIANTS = {"mse_lpips": dict(mse=0.5, lpips=0.5), "magec": dict(mse=0.5, lpips=0.5, id=3e-4, magec=3e-4)}
# XLA:CPU flag sets compared by ``flags`` (jax 0.10.2, whose XLA:CPU runs convolutions and reductions in YNNPACK).
FLAG_SETS = {
    "default": "",
    "eigen_convolutions": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "no_ynn_reduce": "--xla_cpu_experimental_ynn_fusion_type=-reduce",
    "vector_width_512": "--xla_cpu_prefer_vector_width=512",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "concurrency_scheduler": "--xla_cpu_enable_concurrency_optimized_scheduler=true",
}


def compiled_step(resolution: int, batch: int, variant: str):
    """``(engine, compiled step, state, targets)`` for random config-f weights at ``resolution``."""
    nets = paper_networks(resolution, 16384 if resolution <= 256 else 32768)
    engine = Engine(nets, InversionSettings(phases=(Phase(1000, **VARIANTS[variant]),)))
    images = jax.random.uniform(jax.random.key(1), (batch, resolution, resolution, 3), minval=-1.0, maxval=1.0)
    targets = engine.prepare(images)
    state = engine.init(batch)
    compiled = engine.compile("step", state, targets, 0)
    return engine, compiled, state, targets


def time_step(resolution: int, batch: int, variant: str, steps: int) -> dict:
    """Fastest of ``steps`` steps after two warm-up steps: wall and process CPU seconds."""
    engine, compiled, state, targets = compiled_step(resolution, batch, variant)
    for i in range(2):
        state = jax.block_until_ready(compiled(state, targets, np.int32(i)))
    wall, cpu = [], []
    for i in range(steps):
        t, c = time.perf_counter(), time.process_time()
        state = jax.block_until_ready(compiled(state, targets, np.int32(i)))
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return dict(wall_s=min(wall), cpu_s=min(cpu), wall_all_s=wall, load_average=list(os.getloadavg()))


# ---- profile ---------------------------------------------------------------------------------------------


def _computations(hlo: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The HLO module's computations (name -> lines) and every instruction's defining line."""
    comps: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{$", line)
        if m:
            current = comps.setdefault(m.group(1), [])
            continue
        if current is not None:
            current.append(line)
    lines = {}
    for body in comps.values():
        for line in body:
            m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)
            if m:
                lines[m.group(1)] = line
    return comps, lines


def _conv_gflop(body: list[str], lines: dict[str, str]) -> float:
    """Analytic GFLOP of the convolutions in a fused computation: 2 x output size x window x input features."""
    total = 0.0
    for line in body:
        m = re.search(r"= \w+\[([\d,]*)\]\S* convolution\(%([\w.\-]+), %([\w.\-]+)\)", line)
        if not m:
            continue
        out = [int(x) for x in m.group(1).split(",") if x]
        rhs = re.search(r"= \w+\[([\d,]*)\]", lines.get(m.group(3), ""))
        labels = re.search(r"dim_labels=\w+_(\w+)->", line)
        if not rhs or not labels:
            continue
        rhs_shape = [int(x) for x in rhs.group(1).split(",") if x]
        window = re.search(r"window=\{size=([\dx]+)", line)
        taps = math.prod(int(v) for v in window.group(1).split("x")) if window else 1
        groups = re.search(r"feature_group_count=(\d+)", line)
        del groups  # the kernel's input-feature dimension is already per group
        total += 2.0 * math.prod(out) * taps * rhs_shape[labels.group(1).index("i")] / 1e9
    return total


def _network(line: str) -> str:
    name = re.search(r'op_name="([^"]*)"', line)
    name = name.group(1) if name else ""
    for key, network in (("synthesis", "generator"), ("LPIPS", "lpips"), ("VGG16", "lpips"), ("IRSE50", "identity"),
                         ("magec", "magec"), ("LinkNet", "magec")):
        if key in name:
            return network
    return "other"


def profile(resolution: int, batch: int, variant: str) -> dict:
    """Per-op time of two traced steps, summed by kind and by network (see the module docstring)."""
    engine, compiled, state, targets = compiled_step(resolution, batch, variant)
    for i in range(2):
        state = jax.block_until_ready(compiled(state, targets, np.int32(i)))
    with tempfile.TemporaryDirectory() as trace_dir:
        t = time.perf_counter()
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for i in range(2):
                state = jax.block_until_ready(compiled(state, targets, np.int32(i)))
        traced_step_s = (time.perf_counter() - t) / 2
        [trace] = Path(trace_dir).rglob("*.trace.json.gz")
        events = json.loads(gzip.decompress(trace.read_bytes()))
    events = events["traceEvents"] if isinstance(events, dict) else events
    op_us = collections.Counter()
    for e in events:
        if e.get("ph") == "X":
            op_us[e["name"]] += e["dur"]
    hlo = compiled.func.as_text()
    comps, lines = _computations(hlo)
    entry = next(name for name in comps if hlo.find(f"ENTRY %{name} ") >= 0)
    weight_only = _weight_only(comps[entry])
    by_kind, by_network, by_both, ops = collections.Counter(), collections.Counter(), collections.Counter(), []
    conv_ms = conv_gflop = 0.0
    for name, us in op_us.items():
        if name not in lines:
            continue
        ms = us / 2e3  # two steps
        line = lines[name]
        called = re.search(r"calls=%([\w.\-]+)", line)
        gflop = _conv_gflop(comps.get(called.group(1), []) if called else [line], lines)
        if name in weight_only:
            kind = "weight-only (constant per step)"
        elif gflop:
            kind = "convolution"
            conv_ms, conv_gflop = conv_ms + ms, conv_gflop + gflop
        elif "transpose" in name or "copy" in name:
            kind = "layout copy"
        else:
            kind = "other (elementwise, reductions, pads)"
        by_kind[kind] += ms
        by_network[_network(line)] += ms
        by_both[f"{_network(line)}: {kind}"] += ms
        ops.append(dict(op=name, ms=round(ms, 2), gflop=round(gflop, 3), kind=kind, network=_network(line)))
    ops.sort(key=lambda o: -o["ms"])
    return dict(
        traced_step_s=traced_step_s, op_ms_total=round(sum(by_kind.values()), 1),
        by_kind_ms={k: round(v, 1) for k, v in by_kind.most_common()},
        by_network_ms={k: round(v, 1) for k, v in by_network.most_common()},
        by_network_and_kind_ms={k: round(v, 1) for k, v in by_both.most_common()},
        convolutions=dict(gflop_per_step=round(conv_gflop, 1), op_ms=round(conv_ms, 1),
                          gflop_per_s=round(conv_gflop / conv_ms * 1e3, 1) if conv_ms else None),
        top_ops=ops[:25],
    )


def _weight_only(entry: list[str]) -> set[str]:
    """Instructions of the entry computation computed from network weights and constants alone."""
    defs = {}
    for line in entry:
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*?[\w\-]+\((.*?)\)(?:,|$)", line)
        if m:
            defs[m.group(1)] = (re.findall(r"%([\w.\-]+)", m.group(2)), line)
    known: dict[str, bool] = {}

    def constant(name: str) -> bool:
        if name not in known:
            operands, line = defs.get(name, ((), ""))
            if " parameter(" in line:
                known[name] = "arrays_" in name  # the engine's frozen networks are its `arrays` argument
            elif " constant(" in line:
                known[name] = True
            else:
                known[name] = bool(operands) and all(constant(o) for o in operands)
        return known[name]

    return {name for name in defs if constant(name) and " parameter(" not in defs[name][1]
            and " constant(" not in defs[name][1]}


# ---- flags ------------------------------------------------------------------------------------------------


def compare_flags(resolution: int, batch: int, variant: str, steps: int, rounds: int, names: list[str]) -> dict:
    """Each flag set's fastest step over ``rounds`` interleaved subprocess runs."""
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names:
            env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {FLAG_SETS[name]}".strip())
            cmd = [sys.executable, __file__, "time", "--resolution", str(resolution), "--batch", str(batch),
                   "--variant", variant, "--steps", str(steps)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1} {name}: {runs[name][-1]['wall_s']:.3f} s wall, {runs[name][-1]['cpu_s']:.3f} s CPU "
                  f"(load {runs[name][-1]['load_average'][0]:.1f})", file=sys.stderr, flush=True)
    return {name: dict(flags=FLAG_SETS[name], wall_s=min(r["wall_s"] for r in rs), cpu_s=min(r["cpu_s"] for r in rs),
                       runs=rs) for name, rs in runs.items()}


def _commit(tree: Path) -> str:
    """``tree``'s commit, with ``+changes`` when its working tree differs from it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True).stdout.strip()

    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+changes" if git("status", "--porcelain") else "")


def checkouts(against: list[Path]) -> dict[str, Path]:
    """``{label: folder}`` of this checkout (``this``) and of each ``against`` one, labelled by its path relative
    to this checkout (``magec_jax.paths.portable_path``: ``../baseline`` beside it, the name alone elsewhere),
    never by an absolute path of this machine: the labels are recorded in the results."""
    return {"this": REPO, **{portable_path(tree.resolve(), REPO): tree.resolve() for tree in against}}


def compare_trees(resolution: int, batch: int, variant: str, steps: int, rounds: int, against: list[Path]) -> dict:
    """The step of this checkout and of each ``against`` checkout: fastest over ``rounds`` interleaved runs;
    each checkout recorded under its label from :func:`checkouts`, with its ``path`` written the same way."""
    trees = checkouts(against)
    for label, tree in trees.items():
        if not (tree / "benchmarks" / "cpu_profile.py").is_file():
            raise SystemExit(f"{tree}: not a magec_jax checkout (no benchmarks/cpu_profile.py)")
    runs: dict[str, list[dict]] = {label: [] for label in trees}
    for r in range(rounds):
        for label, tree in trees.items():
            cmd = [sys.executable, str(tree / "benchmarks" / "cpu_profile.py"), "time", "--resolution", str(resolution),
                   "--batch", str(batch), "--variant", variant, "--steps", str(steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[label].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1} {label}: {runs[label][-1]['wall_s']:.3f} s wall (load "
                  f"{runs[label][-1]['load_average'][0]:.1f})", file=sys.stderr, flush=True)
    return {label: dict(path=portable_path(tree, REPO), commit=_commit(tree),
                        wall_s=min(r["wall_s"] for r in runs[label]), cpu_s=min(r["cpu_s"] for r in runs[label]),
                        runs=runs[label])
            for label, tree in trees.items()}


def peak(repeats: int) -> dict:
    """Attainable float32 GFLOP/s: a 4096^3 matmul, and a 3x3 convolution (256 -> 256 channels at 128x128,
    batch 1) forward and forward + backward to the input; the fastest of ``repeats`` runs each."""
    import jax.numpy as jnp

    def best_gflops(fn, args, gflop):
        out = jax.block_until_ready(fn(*args))
        times = []
        for _ in range(max(repeats, 2)):
            t = time.perf_counter()
            out = jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - t)
        del out
        return dict(gflop=round(gflop, 3), best_s=min(times), gflop_per_s=round(gflop / min(times), 1))

    a = jax.random.normal(jax.random.key(0), (4096, 4096), jnp.float32)
    x = jax.random.normal(jax.random.key(1), (1, 128, 128, 256), jnp.float32)
    k = jax.random.normal(jax.random.key(2), (3, 3, 256, 256), jnp.float32) * 0.02

    def conv(x):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    conv_gflop = 2 * 128 * 128 * 256 * 256 * 9 / 1e9
    return dict(
        matmul_4096=best_gflops(jax.jit(lambda a: a @ a), (a,), 2 * 4096 ** 3 / 1e9),
        conv3x3_256ch_128px_forward=best_gflops(jax.jit(conv), (x,), conv_gflop),
        conv3x3_256ch_128px_forward_backward=best_gflops(
            jax.jit(jax.grad(lambda x: jnp.sum(jnp.square(conv(x))))), (x,), 2 * conv_gflop),
    )


def forms(repeats: int) -> dict:
    """Milliseconds of one convolution written in the forms XLA:CPU runs at different speeds (module docstring)."""
    import jax.numpy as jnp
    from jax import lax

    from magec_jax import ops

    dims = ("NHWC", "HWIO", "NHWC")

    def best_ms(fn, *args):
        fn = jax.jit(fn)
        jax.block_until_ready(fn(*args))
        times = []
        for _ in range(max(repeats, 3)):
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - t)
        return round(min(times) * 1e3, 1)

    def normal(*shape):
        return jax.random.normal(jax.random.key(len(shape)), shape, jnp.float32)

    dy, kt = normal(1, 513, 513, 32), normal(2, 2, 32, 64) * 0.05
    x1, k1 = normal(1, 512, 512, 64), normal(1, 1, 64, 32) * 0.1
    (kt_t,), (k1_t,) = ops.freeze_conv(kt).kernels_t, ops.freeze_conv(k1).kernels_t
    return {
        "conv2x2_32to64ch_513px_valid (the input gradient of the 1024 block's up-sampling phase)": dict(
            as_is_ms=best_ms(lambda y: lax.conv_general_dilated(y, kt, (1, 1), "VALID", dimension_numbers=dims), dy),
            padded_by_one_and_cropped_ms=best_ms(lambda y: ops.frozen_conv2d(y, kt, kt_t, 0), dy),
        ),
        "conv1x1_64to32ch_512px": dict(
            convolution_ms=best_ms(lambda x: lax.conv_general_dilated(x, k1, (1, 1), "VALID", dimension_numbers=dims),
                                   x1),
            matrix_product_ms=best_ms(lambda x: ops.frozen_conv2d(x, k1, k1_t, 0), x1),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("profile", "flags", "time", "peak", "forms", "trees"))
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--variant", choices=tuple(VARIANTS), default="mse_lpips")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--flag-sets", nargs="+", default=list(FLAG_SETS), choices=list(FLAG_SETS))
    parser.add_argument("--against", nargs="+", type=Path, default=[], help="other checkouts, for trees")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    if args.mode == "time":  # one flag set's subprocess
        print(json.dumps(time_step(args.resolution, args.batch, args.variant, args.steps)))
        return
    record = dict(machine=machine_info(), resolution=args.resolution, batch=args.batch, variant=args.variant)
    if args.mode == "peak":
        record = dict(machine=machine_info(), peak=peak(args.steps))
    elif args.mode == "forms":
        record = dict(machine=machine_info(), forms=forms(args.steps))
    elif args.mode == "profile":
        record["profile"] = profile(args.resolution, args.batch, args.variant)
    elif args.mode == "trees":
        if not args.against:
            parser.error("trees needs --against CHECKOUT [CHECKOUT ...]")
        record["trees"] = compare_trees(args.resolution, args.batch, args.variant, args.steps, args.rounds,
                                        args.against)
    else:
        record["flag_sets"] = compare_flags(args.resolution, args.batch, args.variant, args.steps, args.rounds,
                                            args.flag_sets)
    record["load_average_at_end"] = list(os.getloadavg())
    name = f"cpu_profile_{args.mode}.json" if args.mode in ("peak", "forms") else \
        f"cpu_profile_{args.mode}_{args.resolution}.json"
    path = args.out_dir / name
    atomic_write_json(path, record)
    print(json.dumps({k: v for k, v in record.items() if k != "machine"}, indent=1)[:4000])


if __name__ == "__main__":
    main()

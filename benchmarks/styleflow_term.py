"""The cost of the ``magec_styleflow`` term in an inversion step: the paper's MAGEC step (phase-2 weights) with and
without it, at 64 px on the demo bundle (its trained prior) and at 1024 px on config-f networks with random
weights and a random prior of the official architecture (``cnf(512, '512-512-512-512-512', 40, 1)``: one context
value per output of the 40-attribute descriptor).

    python benchmarks/styleflow_term.py                        # both, ~15 min on 2 cores
    python benchmarks/styleflow_term.py --skip-1024 --steps 2 --repeats 1 --out /tmp/dry.json   # quick check

Per setting: compile seconds, then the fastest of ``--repeats`` windows of ``--steps`` steps (``dispatch`` loop,
batch ``--batch``), wall and process CPU seconds per image-step, and the term's share of the step (the extra
time over the step without it). The term's solves use its default fixed RK4 grid (``styleflow_steps``), so a
step's cost does not depend on the latent. Results are printed and written to
``benchmarks/results/styleflow_term.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import save_result  # noqa: E402
from networks import paper_networks  # noqa: E402

from magec_jax import Engine, load_bundle, protocol_settings  # noqa: E402
from magec_jax.inversion.networks import FlowSupervision  # noqa: E402
from magec_jax.inversion.settings import ComputeOptions, Phase  # noqa: E402
from magec_jax.models import styleflow as sf  # noqa: E402


def random_flow(nets, seed: int = 0) -> FlowSupervision:
    """A randomly initialised prior of the official architecture whose context is the descriptor's logits."""
    num_k = nets.descriptor.num_outputs
    cfg = sf.StyleFlowConfig(w_dim=nets.w_dim, context_dim=num_k)
    variables = sf.StyleFlow(cfg).init(jax.random.key(seed), jnp.zeros((1, 1, cfg.w_dim)), jnp.zeros((1, num_k)))
    layers = np.zeros((num_k, nets.num_ws), bool)
    layers[:, :8] = True
    return FlowSupervision(config=cfg, variables=variables, mean_M=jnp.zeros(num_k), std_M=jnp.ones(num_k),
                           layers_KxL=jnp.asarray(layers), signs_K=jnp.ones(num_k),
                           context_apply=nets.descriptor.apply, context_variables=nets.descriptor.variables)


def measure(nets, name: str, batch: int, steps: int, repeats: int) -> list[dict]:
    """One row with and one without the term."""
    base = protocol_settings("magec")
    weights = dict(base.phases[-1].weights)
    images = np.random.default_rng(0).uniform(-1, 1, (batch, nets.resolution, nets.resolution, 3)).astype(np.float32)
    runs = {}
    for label, extra in (("magec", {}), ("magec + magec_styleflow", {"magec_styleflow": weights["magec"]})):
        settings = dataclasses.replace(base, phases=(Phase(10 * steps, {**weights, **extra}),), chunk_steps=steps,
                                       compute=dataclasses.replace(ComputeOptions().resolved(), loop="dispatch"))
        engine = Engine(nets, settings)
        targets = jax.block_until_ready(engine.prepare(images))
        state = engine.init(batch)
        t0 = time.perf_counter()
        engine.compile("step", state, targets, 0)
        runs[label] = dict(engine=engine, targets=targets, state=state, compile_s=time.perf_counter() - t0, t=[])
    for run in runs.values():  # warm-up
        run["state"] = jax.block_until_ready(run["engine"].step(run["state"], run["targets"], 0))
    for _ in range(repeats):
        for run in runs.values():  # alternate, so that load changes hit both
            t0, c0 = time.perf_counter(), time.process_time()
            for step in range(steps):
                run["state"] = run["engine"].step(run["state"], run["targets"], step)
            jax.block_until_ready(run["state"])
            run["t"].append((time.perf_counter() - t0, time.process_time() - c0))
    rows = []
    for label, run in runs.items():
        wall, cpu = (min(t[i] for t in run["t"]) / steps / batch for i in (0, 1))
        rows.append(dict(networks=name, resolution=nets.resolution, terms=label, batch=batch,
                         compile_s=round(run["compile_s"], 1), s_per_image_step=round(wall, 4),
                         cpu_s_per_image_step=round(cpu, 4), windows_s=[round(t[0], 3) for t in run["t"]]))
    plain, with_term = rows
    share = (with_term["s_per_image_step"] - plain["s_per_image_step"]) / with_term["s_per_image_step"]
    with_term["term_share_of_step"] = round(share, 3)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "demo" / "bundle")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-1024", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "styleflow_term.json")
    args = parser.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")  # as the inversion job runs
    t0 = time.perf_counter()
    rows = []
    demo = load_bundle(args.bundle).networks()
    if demo.styleflow is None:
        sys.exit(f"{args.bundle}: no StyleFlow prior trained on its F (python -m magec_jax.styleflow)")
    rows += measure(demo, "demo bundle", args.batch, args.steps, args.repeats)
    if not args.skip_1024:
        paper = paper_networks(1024, 32768)
        flow = random_flow(paper)
        variant = paper.compute_variant
        paper = dataclasses.replace(paper, styleflow=flow,
                                    compute_variant=lambda c: dataclasses.replace(variant(c), styleflow=flow))
        rows += measure(paper, "config-f 1024, random weights", 1, max(1, args.steps // 2), args.repeats)
    for row in rows:
        print(row, flush=True)
    save_result(args.out, "magec_styleflow term: inversion step with and without it (MAGEC phase-2 weights)", rows, t0)


if __name__ == "__main__":
    main()

"""StyleFlow prior speed: forward (w -> z) then reverse (z -> w) of a batch of W+ latents, by solver setting.

    python benchmarks/styleflow.py                  # batch 32 of 18x512 latents, ~5 min on 2 busy cores
    python benchmarks/styleflow.py --batch 8 --min-seconds 10 --settings dopri5-edit rk4-32

The network is the fixture's random-weight prior (``../shared/fixtures/styleflow/styleflow_random.pt``, the
official architecture ``cnf(512, '512-512-512-512-512', 17, 1)``; speed does not depend on the weights, the
number of steps does a little). The latents are seeded standard normals, the contexts the fixture's four
attribute rows repeated. One call is one jitted round trip ``w -> z -> w`` with the same compiled solve for
both directions (``reverse`` is a traced argument), so each setting compiles once per batch shape. Settings:

* ``dopri5-edit``: the official dopri5 at atol = rtol = 1e-5, per-image step control, no log-density (what an
  edit needs: only z and w');
* ``dopri5-logp``: the same with the Hutchinson log-density (the official computation);
* ``dopri5-batch-logp``: with one step size for the whole batch, as torchdiffeq does;
* ``rk4-32``: the 3/8-rule RK4 on 32 fixed steps, no log-density.

Per setting: compile seconds, seconds per round trip (wall and process CPU) and per image, the vector-field
evaluations per image each way (mean and max; with per-image control a vmapped batch runs until its slowest
image is done, so the batch's cost follows the max), and the round trip's max |w' - w|.
Results go to ``benchmarks/results/styleflow.json``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "styleflow.json"
FIXTURE = Path(os.environ.get("MAGEC_SHARED", REPO.parent / "shared")) / "fixtures" / "styleflow"

from harness import save_result, time_compiled  # noqa: E402

from magec_jax.models import styleflow as sf  # noqa: E402
from magec_jax.models.cnf import ODESolver  # noqa: E402
from ports.styleflow import convert_styleflow  # noqa: E402

SETTINGS = {
    "dopri5-edit": (ODESolver(), "none"),
    "dopri5-logp": (ODESolver(), "hutchinson"),
    "dopri5-batch-logp": (ODESolver(batch_step_control=True), "hutchinson"),
    "rk4-32": (ODESolver("rk4", num_steps=32), "none"),
}


def round_trip_fn(config: sf.StyleFlowConfig, solver: ODESolver, divergence: str):
    """``(variables, w, ctx, eps_fwd, eps_rev) -> (w', nfe_fwd, nfe_rev)``: forward then reverse, one compile."""
    flow = functools.partial(sf.flow, config=config, solver=solver, divergence=divergence)
    hutchinson = divergence == "hutchinson"

    def round_trip(variables, w, ctx, eps_fwd, eps_rev):
        fwd = flow(variables, w, ctx, None, eps_fwd if hutchinson else None, jnp.asarray(False))
        rev = flow(variables, fwd.x_BxLxD, ctx, None, eps_rev if hutchinson else None, jnp.asarray(True))
        return rev.x_BxLxD, fwd.nfe_B, rev.nfe_B

    return jax.jit(round_trip)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--min-iters", type=int, default=2)
    parser.add_argument("--min-seconds", type=float, default=20.0)
    parser.add_argument("--weights", type=Path, default=FIXTURE / "styleflow_random.pt")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()

    converted = convert_styleflow(args.weights)
    config = sf.config_from_dict(converted.config)
    variables = jax.tree.map(jnp.asarray, converted.variables)
    with np.load(FIXTURE / "cases.npz") as npz:
        attr = npz["attr"].reshape(-1, config.context_dim)
    rng = np.random.default_rng(0)
    shape = (args.batch, 18, config.w_dim)
    w = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
    ctx = jnp.asarray(np.resize(attr, (args.batch, config.context_dim)))
    eps_fwd, eps_rev = (jnp.asarray(rng.standard_normal(shape, dtype=np.float32)) for _ in range(2))

    rows = []
    for name in args.settings:
        solver, divergence = SETTINGS[name]
        fn = round_trip_fn(config, solver, divergence)
        fn_args = (variables, w, ctx, eps_fwd, eps_rev)
        timing = time_compiled(fn, fn_args, min_iters=args.min_iters, min_seconds=args.min_seconds)
        w_back, nfe_fwd, nfe_rev = jax.device_get(fn(*fn_args))
        row = {
            "setting": name, "method": solver.method, "num_steps": solver.num_steps or None,
            "rtol": solver.rtol if solver.adaptive else None, "atol": solver.atol if solver.adaptive else None,
            "step_control": ("per image" if solver.per_image else "per batch") if solver.adaptive else "fixed grid",
            "divergence": divergence, "batch": args.batch, "latent_shape": [18, config.w_dim], **timing,
            "s_per_image_round_trip": timing["wall_s_per_call"] / args.batch,
            "nfe_forward_mean": float(np.mean(nfe_fwd)), "nfe_forward_max": int(np.max(nfe_fwd)),
            "nfe_reverse_mean": float(np.mean(nfe_rev)), "nfe_reverse_max": int(np.max(nfe_rev)),
            "round_trip_max_abs": float(np.max(np.abs(w_back - np.asarray(w)))),
        }
        rows.append(row)
        print(f"{name:18s} compile {row['compile_s']:5.1f} s  round trip {row['wall_s_per_call']:6.2f} s "
              f"(cpu {row['cpu_s_per_call']:6.2f} s)  nfe fwd {row['nfe_forward_mean']:.0f}/{row['nfe_forward_max']} "
              f"rev {row['nfe_reverse_mean']:.0f}/{row['nfe_reverse_max']}  |w'-w| {row['round_trip_max_abs']:.2e}",
              flush=True)
    weights = os.path.relpath(args.weights.resolve(), REPO)  # repository-relative: '../shared/...'
    save_result(args.out, f"StyleFlow prior round trip w -> z -> w, batch {args.batch} x 18 x {config.w_dim} "
                f"({weights})", rows, started)


if __name__ == "__main__":
    main()

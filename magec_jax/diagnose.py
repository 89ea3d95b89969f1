"""Diagnose a bundle's MAGEC term: LinkNet vs the boundaries, edit strength, and the term's gradient share.

    python -m magec_jax.diagnose --bundle demo/bundle
    python -m magec_jax.diagnose --bundle demo/bundle --latents out/eval_demo/magec/inversions \\
        --out out/eval_demo/diagnosis.json

Without ``--latents``: :func:`magec_jax.supervision.diagnostics.linknet_consistency` on ``--num-samples``
mapped w. With ``--latents`` (inversion ``.npz`` files or output folders; each latent's input image is found
through its ``.json``): also :func:`~magec_jax.supervision.diagnostics.loss_balance` at those latents, with
the weights of each phase of ``--protocol``. Prints a short readable summary (:func:`summary_lines`; ``--json``
prints the whole report instead) and writes the JSON report to ``--out`` when given; the report names the
bundle and the latents relative to the working directory (``magec_jax.paths.portable_path``), never by an
absolute path.
Argparse rather than a config file, like ``python -m magec_jax.edit``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np

from magec_jax import images as imio
from magec_jax.bundle import load_bundle
from magec_jax.editing.render import list_latents, load_latent
from magec_jax.cli import DefaultsHelpFormatter, error_status
from magec_jax.configdicts import from_configdict
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.inversion.engine import Engine
from magec_jax.inversion.job import JobConfig
from magec_jax.inversion.protocols import PROTOCOLS, job_config
from magec_jax.paths import portable_path
from magec_jax.supervision.diagnostics import linknet_consistency, loss_balance


def diagnose(bundle_path: str, *, latents: list[str], protocol: str, alpha: float | None, num_samples: int,
             batch_size: int) -> dict:
    """The diagnosis as a dict (see the module docstring)."""
    bundle = load_bundle(bundle_path)
    settings = from_configdict(JobConfig, job_config(protocol)).settings
    if alpha is not None:
        settings = dataclasses.replace(settings, magec_alpha=alpha)
    report = dict(bundle=portable_path(bundle.path), protocol=protocol,
                  linknet=linknet_consistency(bundle, alpha=settings.magec_alpha, num_samples=num_samples))
    paths = list_latents(latents) if latents else []
    if paths:
        nets = bundle.networks()
        engine = Engine(nets, settings)
        lats = [load_latent(p) for p in paths]
        missing = [lat.path for lat in lats if lat.image is None]
        if missing:
            raise FileFormatError(missing[0], "no inversion record (.json) naming the input image")
        w = np.stack([lat.w_LxD for lat in lats])
        images = np.stack([imio.load_image(lat.image, nets.resolution, min_size=1) for lat in lats])
        report["loss_balance"] = loss_balance(engine, w, images, settings.phases, batch_size=batch_size)
        report["loss_balance"]["latents"] = [portable_path(p) for p in paths]
    return report


def summary_lines(report: dict) -> list[str]:
    """The report in a few readable lines: per attribute of LinkNet, its label rate, how often the MAGEC edit
    flips it, alpha in standard deviations of w along the boundary and its sensitivity row; then, with loss
    balance, the median terms and the MAGEC term's share of the weighted gradient in each phase."""
    ln = report["linknet"]
    names = ln["attributes"]
    width = max(map(len, names + ["attribute"]))
    lines = [f"LinkNet on {ln['num_samples']} mapped w, alpha {ln['alpha']:g} ({report['bundle']}):",
             f"  {'attribute':<{width}}  positive  flipped  alpha/std  sensitivity to each boundary "
             f"({', '.join(names)}; the diagonal should be clearly positive)"]
    for name in names:
        row = ln["per_attribute"][name]
        sens = " ".join(f"{row['sensitivity'][n]:+.2f}" for n in names)
        lines.append(f"  {name:<{width}}  {row['positive_rate']:8.2f}  {row['flip_rate']:7.2f}  "
                     f"{row['alpha_in_std']:9.2f}  {sens}")
    balance = report.get("loss_balance")
    if balance:
        terms = ", ".join(f"{t} {v:.3g}" for t, v in balance["terms"].items())
        lines.append(f"Loss balance at {balance['num_images']} latents (median terms: {terms}):")
        for i, phase in enumerate(balance["phases"], start=1):
            weights = ", ".join(f"{t} {w:g}" for t, w in phase["weights"].items())
            lines.append(f"  phase {i} ({weights}): the MAGEC term is {100 * phase['magec_share']:.1f}% of the "
                         "weighted gradient")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magec_jax.diagnose", description=__doc__.split("\n\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--bundle", required=True, help="model bundle with descriptor, LinkNet and boundaries")
    parser.add_argument("--latents", nargs="*", default=[], help="inversion .npz files or output folders")
    parser.add_argument("--protocol", default="magec", choices=PROTOCOLS, help="whose phase weights to use")
    parser.add_argument("--alpha", type=float, default=None, help="edit strength (default: the protocol's)")
    parser.add_argument("--num-samples", type=int, default=4000, help="mapped w samples")
    parser.add_argument("--batch-size", type=int, default=8, help="latents per gradient call")
    parser.add_argument("--out", default="", help="write the JSON report here")
    parser.add_argument("--json", action="store_true", help="print the whole JSON report, not the summary")
    args = parser.parse_args(argv)
    try:
        report = diagnose(args.bundle, latents=args.latents, protocol=args.protocol, alpha=args.alpha,
                          num_samples=args.num_samples, batch_size=args.batch_size)
    except MagecError as e:
        return error_status(e)
    text = json.dumps(report, indent=2)
    print(text if args.json else "\n".join(summary_lines(report)))
    if args.out:
        imio.atomic_write_bytes(args.out, (text + "\n").encode())
        if not args.json:
            print(f"report -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

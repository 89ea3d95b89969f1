"""Diagnose a bundle's MAGEC term: LinkNet vs the boundaries, edit strength, and the term's gradient share.

    python -m magec_jax.diagnose --bundle demo/bundle
    python -m magec_jax.diagnose --bundle demo/bundle --latents out/eval_demo/magec/inversions \\
        --out out/eval_demo/diagnosis.json

Without ``--latents``: :func:`magec_jax.supervision.diagnostics.linknet_consistency` on ``--num-samples``
mapped w. With ``--latents`` (inversion ``.npz`` files or output folders; each latent's input image is found
through its ``.json``): also :func:`~magec_jax.supervision.diagnostics.loss_balance` at those latents, with
the weights of each phase of ``--protocol``. Prints the JSON and writes it to ``--out`` when given.
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
from magec_jax.cli import error_status
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.inversion.engine import Engine
from magec_jax.inversion.job import JobConfig
from magec_jax.inversion.protocols import PROTOCOLS, job_config
from magec_jax.supervision.diagnostics import linknet_consistency, loss_balance


def diagnose(bundle_path: str, *, latents: list[str], protocol: str, alpha: float | None, num_samples: int,
             batch_size: int) -> dict:
    """The diagnosis as a dict (see the module docstring)."""
    bundle = load_bundle(bundle_path)
    settings = JobConfig.from_config(job_config(protocol)).settings
    if alpha is not None:
        settings = dataclasses.replace(settings, magec_alpha=alpha)
    report = dict(bundle=str(bundle.path), protocol=protocol,
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
        rows = [phase.weights() for phase in settings.phases]
        report["loss_balance"] = loss_balance(engine, w, images, rows, batch_size=batch_size)
        report["loss_balance"]["latents"] = [str(p) for p in paths]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magec_jax.diagnose", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="model bundle with descriptor, LinkNet and boundaries")
    parser.add_argument("--latents", nargs="*", default=[], help="inversion .npz files or output folders")
    parser.add_argument("--protocol", default="magec", choices=PROTOCOLS, help="phase weights (default magec)")
    parser.add_argument("--alpha", type=float, default=None, help="edit strength (default: the protocol's)")
    parser.add_argument("--num-samples", type=int, default=4000, help="mapped w samples (default 4000)")
    parser.add_argument("--batch-size", type=int, default=8, help="latents per gradient call (default 8)")
    parser.add_argument("--out", default="", help="also write the JSON here")
    args = parser.parse_args(argv)
    try:
        report = diagnose(args.bundle, latents=args.latents, protocol=args.protocol, alpha=args.alpha,
                          num_samples=args.num_samples, batch_size=args.batch_size)
    except MagecError as e:
        return error_status(e)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        imio.atomic_write_bytes(args.out, (text + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())

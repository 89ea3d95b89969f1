"""Edit inverted latents and render them: InterFaceGAN, GANSpace, StyleFlow, interpolation.

    python -m magec_jax.edit out/magec --bundle BUNDLE --out out/edits \\
        --attribute Smiling --attribute Male --strengths -3,0,3 \\
        --component 46 --layers 4:5 --gs-strengths -20,20 [--pca ffhq_pca.npz] \\
        --styleflow expected_age=25,expected_age=60 --styleflow gender_logit=4,happy_log_odds=3 \\
        --interpolate-to out/magec/other.npz --steps 5

LATENTS are the inversion job's ``<name>.npz`` files or its output folders. Each ``--attribute`` (a direction
of the bundle) and each ``--component`` (of the GANSpace PCA: ``--pca`` or the bundle's ``ganspace`` entry;
``--layers START:END``, end exclusive, default all) is one row of the grid, swept over its strengths (a list
``-3,0,3`` or a range ``START:STOP:COUNT``, e.g. ``-3:3:7``). Each ``--styleflow A=V[,B=W...]`` is a row of
StyleFlow edits made one after another, a column per change (``magec_jax.editing.styleflow``): the prior is the
bundle's ``styleflow`` entry or ``--styleflow-prior``; an image's attributes come from ``--styleflow-attributes``
(JSON ``{latent name: {attribute: value}}``), else from F on its reconstruction when the prior was trained on
F's outputs, else from maximising the prior's likelihood of the latent. An unknown attribute is an error that
lists the valid ones; a value outside the range seen in training is a warning.
Per latent ``<name>`` it writes ``OUT/<name>.png`` (rows: input | reconstruction | edits; the input is found
through the inversion's ``<name>.json``), ``OUT/<name>/<label>.npz`` (edited latents, key ``w``
``[1, num_ws, w_dim]``) and ``OUT/<name>.json``. A rerun skips latents already done with the same edits.
``OUT/grid.png`` has every latent's grid in one sheet, each row labelled with its edits. ``--paste-back`` (for
faces the inversion job aligned from photographs, ``config.align``: their ``<name>.json`` records the photograph
and the alignment) also writes ``OUT/<name>/<label>.png``, the whole photograph at its own size with the edited
face pasted back. ``--delta`` renders each latent (reconstruction and edits) with its generator tuned by pivotal
tuning (the job's ``pti/`` folder with ``config.pti``, or one delta file for one latent).
Argparse rather than a config file: this is an interactive tool whose arguments change every call (like
``python -m ports.convert``); the library call is :func:`magec_jax.editing.render.run_edits` with a loaded bundle
(:func:`run` does both).
"""

from __future__ import annotations

import argparse
import sys

from magec_jax.bundle import load_bundle
from magec_jax.cli import DefaultsHelpFormatter, error_status
from magec_jax.editing.render import Edit, EditJob, parse_floats, run_edits
from magec_jax.editing.styleflow import bundle_editor, parse_changes
from magec_jax.errors import MagecError
from magec_jax.images import MAX_IMAGE_PIXELS
from magec_jax.logs import Log, to_stderr
from magec_jax.supervision.styleflow import descriptor_context_fn


def parse_args(argv: list[str] | None = None) -> tuple[str, EditJob]:
    """The command line as ``(bundle path, EditJob)``."""
    parser = argparse.ArgumentParser(prog="python -m magec_jax.edit", description=__doc__.split("\n\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("latents", nargs="+", help="inversion .npz files or output folders")
    parser.add_argument("--bundle", required=True, help="model bundle (generator, directions, ganspace)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--attribute", action="append", default=[], help="InterFaceGAN direction (repeatable)")
    parser.add_argument("--strengths", default="-3,0,3", help="InterFaceGAN strengths, boundary units")
    parser.add_argument("--component", action="append", type=int, default=[], help="GANSpace component (repeatable)")
    parser.add_argument("--layers", default="", help="GANSpace layers START:END, end exclusive (empty: all)")
    parser.add_argument("--gs-strengths", default="-2,0,2", help="GANSpace strengths, in standard deviations "
                        "along the component")
    parser.add_argument("--pca", default="", help="GANSpace PCA file (.npz or e4e ffhq_pca.pt; "
                        "empty: the bundle's)")
    parser.add_argument("--styleflow", action="append", default=[], metavar="ATTR=VALUE[,ATTR=VALUE]",
                        help="a row of StyleFlow edits made one after another (repeatable)")
    parser.add_argument("--styleflow-prior", default="", help="converted StyleFlow prior (empty: the bundle's)")
    parser.add_argument("--styleflow-attributes", default="", help="JSON {latent name: {attribute: value}}: "
                        "the images' attributes for StyleFlow (empty: from F or by maximum likelihood)")
    parser.add_argument("--interpolate-to", default="", help="second latent: add an interpolation row")
    parser.add_argument("--steps", type=int, default=5, help="interpolation points, t = 0..1")
    parser.add_argument("--batch-size", type=int, default=8, help="images per generator call")
    parser.add_argument("--delta", default="", help="pivotal tuning's weight deltas: a folder of <latent name>.npz "
                        "(the job's pti/) or one file for one latent; each latent is rendered by its tuned generator")
    parser.add_argument("--paste-back", action="store_true", help="also paste each edited face back into its "
                        "photograph (faces inverted with config.align)")
    parser.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS, help="refuse (unread) input "
                        "images and photographs whose width x height is larger: decompression bombs")
    args = parser.parse_args(_attach_negative_values(sys.argv[1:] if argv is None else argv))
    layers = None
    if args.layers:
        try:
            start, end = (int(v) for v in args.layers.split(":"))
        except ValueError:
            raise MagecError(f"--layers: expected START:END, got {args.layers!r}") from None
        layers = (start, end)
    sweeps = [tuple(Edit("interfacegan", s, attribute=a) for s in parse_floats(args.strengths, "--strengths"))
              for a in args.attribute]
    sweeps += [tuple(Edit("ganspace", s, component=c, layers=layers)
                     for s in parse_floats(args.gs_strengths, "--gs-strengths")) for c in args.component]
    if args.steps < 2 or args.batch_size < 1 or args.max_image_pixels < 1:
        raise MagecError("--steps must be at least 2, --batch-size and --max-image-pixels at least 1")
    return args.bundle, EditJob(
        latents=tuple(args.latents), out_dir=args.out, sweeps=tuple(sweeps), interpolate_to=args.interpolate_to,
        steps=args.steps, pca=args.pca, batch_size=args.batch_size, paste_back=args.paste_back,
        max_image_pixels=args.max_image_pixels, styleflow=tuple(parse_changes(t) for t in args.styleflow),
        styleflow_prior=args.styleflow_prior, styleflow_attributes=args.styleflow_attributes, deltas=args.delta)


def _attach_negative_values(argv: list[str]) -> list[str]:
    """``--strengths -3,0,3`` -> ``--strengths=-3,0,3``: argparse would take ``-3,0,3`` for an option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--strengths", "--gs-strengths", "--styleflow") and arg.startswith("-"):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def run(argv: list[str] | None = None, *,
        log: Log = to_stderr) -> dict:
    """Parses the command line, loads the bundle and renders the edits (:func:`run_edits`'s records)."""
    bundle_path, job = parse_args(argv)
    bundle = load_bundle(bundle_path)
    contexts = None
    if job.styleflow and not job.styleflow_attributes:
        contexts = descriptor_context_fn(bundle, bundle_editor(bundle, job.styleflow_prior or None).context_source)
    return run_edits(job, bundle, log=log, styleflow_contexts=contexts)


def main(argv: list[str] | None = None) -> int:
    try:
        run(argv)
    except MagecError as e:
        return error_status(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())

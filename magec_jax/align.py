"""Find and align the faces of photographs the way a generator's training images were framed.

    python -m magec_jax.align photos/ --out aligned/                  # FFHQ crops at 1024
    python -m magec_jax.align photos/ --out aligned/ --size 256       # FFHQ crops at 256
    python -m magec_jax.align photos/ --out aligned/ --bundle BUNDLE  # the bundle's framing and resolution
    python -m magec_jax.align --fit-template BUNDLE [--samples 256]   # fit the bundle's template on its samples
    python -m magec_jax.align --fit-template BUNDLE --images train/   # ... or on its training images

Per face ``<name>__face<j>`` (``<name>``: the photograph's path relative to SRC with ``/`` replaced by ``__``;
``j`` counts its faces from left to right) it writes ``OUT/<name>__face<j>.png``, the aligned crop, and
``OUT/<name>__face<j>.json``: ``landmarks`` (``eye_left``, ``eye_right``, ``mouth_left``, ``mouth_right``, each
``[x, y]`` in photograph pixels; ``eye_left`` is the eye on the image's left), ``quad`` (the crop's 4 corners in
photograph pixels, NVIDIA's order: top-left, bottom-left, bottom-right, top-right), ``output_size``, ``score``
and ``photo_size`` ``[width, height]``. ``OUT/summary.json`` lists the photographs with no face
(``no_face``), those that cannot be read (``unreadable``) and faces too small to align at this size
(``skipped_faces``, with the size), each with its reason. A rerun aligns only what is new or changed.

``--fit-template`` renders N samples of the bundle's generator (or reads ``--images``, resized to the
generator's resolution), finds the eyes and mouth corners in each, and stores their mean in the bundle as its
template (``template.json``, manifest ``framing: template``): from then on photographs are aligned to it.
The library is :mod:`magec_jax.faces.pipeline`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from magec_jax import images as imio
from magec_jax.cli import DefaultsHelpFormatter, error_status
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.faces import pipeline
from magec_jax.logs import Log, to_stderr

DEFAULT_SIZE = 1024


def run(source: str | Path, out_dir: str | Path, *, size: int | None = None, bundle: str | Path | None = None,
        batch_size: int = 32, max_image_pixels: int = imio.MAX_IMAGE_PIXELS,
        log: Log = to_stderr) -> pipeline.AlignReport:
    """Aligns every face of the photographs of ``source`` (a folder or list file) into ``out_dir``: FFHQ at
    ``size`` (default 1024), or the framing and resolution of ``bundle``. A photograph over
    ``max_image_pixels`` is refused before decoding."""
    if bundle is not None:
        from magec_jax.bundle import load_bundle

        framing = load_bundle(bundle).framing()
    else:
        framing = pipeline.Framing.ffhq(DEFAULT_SIZE if size is None else size)
    photos, duplicates = pipeline.list_photos(source, exclude=out_dir)
    for d in duplicates:
        log(f"skipped {d['image']}: {d['reason']}")
    report = pipeline.align_photos(photos, out_dir, framing, batch_size=batch_size, max_pixels=max_image_pixels,
                                   log=log)
    log(f"align: {len(photos)} photographs ({report.detected} detected by this run), {len(report.faces)} faces "
        f"aligned ({framing.kind} at {framing.size} px), {len(report.skipped)} skipped -> {out_dir}")
    return report


def fit_template(bundle: str | Path, *, samples: int = 256, images: str | Path | None = None,
                 seed: int = 0, max_image_pixels: int = imio.MAX_IMAGE_PIXELS,
                 log: Log = to_stderr) -> pipeline.TemplateFit:
    """Fits the template of ``bundle`` on ``samples`` of its generator's samples (or on the ``images`` of a
    folder, resized to its resolution by the input policy of ``magec_jax.images``) and stores it in the bundle."""
    from magec_jax.bundle import load_bundle, set_template

    loaded = load_bundle(bundle)
    if images is not None:
        resolution = loaded.resolution()
        paths = imio.list_images(images)
        if not paths:
            raise MagecError(f"{images}: no images to fit the template on")
        pixels = []
        for p in paths:
            try:
                pixels.append(imio.to_uint8(imio.load_image(p, resolution, min_size=0, max_pixels=max_image_pixels)))
            except FileFormatError as e:
                log(f"skipped {e}")
        if not pixels:
            raise MagecError(f"{images}: none of its {len(paths)} images is readable")
        pixels = np.stack(pixels)
        fit = pipeline.fit_template_on_images(pixels)
    else:
        fit = pipeline.fit_generator_template(*loaded.generator, num_samples=samples, seed=seed)
    set_template(loaded.path, fit.template)
    log(f"template of {loaded.path} from {fit.found} of {fit.images} "
        f"{'images' if images is not None else 'samples'} with a face (spread {fit.spread:.2f} px): "
        f"{fit.template.to_json()}")
    return fit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magec_jax.align", description=__doc__.split("\n\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("source", nargs="?", help="folder (recursive) or list file of photographs")
    parser.add_argument("--out", help="output folder of the aligned faces")
    parser.add_argument("--size", type=int, help=f"FFHQ crop size (default {DEFAULT_SIZE}; not with --bundle)")
    parser.add_argument("--bundle", help="align to this bundle's framing and resolution")
    parser.add_argument("--batch-size", type=int, default=32, help="photographs per detector call")
    parser.add_argument("--fit-template", metavar="BUNDLE", help="fit and store BUNDLE's template instead")
    parser.add_argument("--samples", type=int, default=256, help="generator samples the template is fitted on")
    parser.add_argument("--images", help="fit the template on these images (e.g. training crops) instead")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator samples")
    parser.add_argument("--max-image-pixels", type=int, default=imio.MAX_IMAGE_PIXELS,
                        help="refuse (unread) images whose width x height is larger: decompression bombs")
    args = parser.parse_args(argv)
    if args.fit_template:
        if args.source or args.out:
            parser.error("--fit-template takes no SRC or --out")
        if args.samples < 1:
            parser.error("--samples must be at least 1")
    else:
        if not args.source or not args.out:
            parser.error("SRC and --out are required (or --fit-template BUNDLE)")
        if args.size is not None and args.bundle:
            parser.error("--size and --bundle exclude each other: a bundle's crops have its resolution")
        if (args.size is not None and args.size < 1) or args.batch_size < 1:
            parser.error("--size and --batch-size must be at least 1")
    if args.max_image_pixels < 1:
        parser.error("--max-image-pixels must be at least 1")
    try:
        if args.fit_template:
            fit_template(args.fit_template, samples=args.samples, images=args.images, seed=args.seed,
                         max_image_pixels=args.max_image_pixels)
        else:
            run(args.source, args.out, size=args.size, bundle=args.bundle, batch_size=args.batch_size,
                max_image_pixels=args.max_image_pixels)
    except MagecError as e:
        return error_status(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())

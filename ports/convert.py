"""Convert a foreign checkpoint into the project's converted-weights format.

    python -m ports.convert SRC DST [--format FORMAT] [--network G_ema] [--overwrite]

FORMAT is detected from the file when not given. Each format maps to a converter function
``convert(src: Path, *, network: str | None) -> magec_jax.weights.Converted`` in the module named below;
the module does the reading (via ``ports.pickles`` / ``ports.torch_files``) and its name table.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from magec_jax.errors import MagecError
from magec_jax.weights import Converted, save_converted

# format -> (module, function). Kept as strings so that `--help` imports nothing heavy.
CONVERTERS: dict[str, tuple[str, str]] = {
    # StyleGAN2 generators (ports/stylegan2.py)
    "nvidia-pkl": ("ports.stylegan2", "convert_nvidia_pkl"),
    "tf-pkl": ("ports.stylegan2", "convert_tf_pkl"),
    "rosinality": ("ports.stylegan2", "convert_rosinality"),
    "state-dict": ("ports.stylegan2", "convert_state_dict"),
    # Loss networks (ports/loss_nets.py)
    "lpips-vgg16": ("ports.loss_nets", "convert_lpips_vgg16"),
    "irse50": ("ports.loss_nets", "convert_irse50"),
    "resnet50": ("ports.loss_nets", "convert_resnet50"),
    # TensorFlow.js graph models (ports/tfjs.py)
    "tfjs-faceres": ("ports.tfjs", "convert_faceres"),
    "tfjs-emotion": ("ports.tfjs", "convert_emotion"),
}


def converter_for(fmt: str):
    """The converter function of a format name."""
    module, func = CONVERTERS[fmt]
    return getattr(importlib.import_module(module), func)


def convert(src: str | Path, *, fmt: str | None = None, network: str | None = None) -> Converted:
    """Reads ``src`` (format detected when ``fmt`` is None) and returns the converted network."""
    from ports.detect import detect_format

    src = Path(src)
    fmt = fmt or detect_format(src)
    return converter_for(fmt)(src, network=network)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ports.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="foreign checkpoint file (or TF.js model.json)")
    parser.add_argument("dst", type=Path, help="output directory (converted-weights format)")
    parser.add_argument("--format", dest="fmt", choices=sorted(CONVERTERS), help="skip auto-detection")
    parser.add_argument(
        "--network", help="which network of a multi-network file (StyleGAN2 pickles: G_ema (default), G, D)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        converted = convert(args.src, fmt=args.fmt, network=args.network)
        save_converted(
            args.dst, converted, source=args.src, converter=converted.manifest.get("converter", ""),
            overwrite=args.overwrite,
        )
    except (MagecError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.src} -> {args.dst} ({converted.kind}, {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

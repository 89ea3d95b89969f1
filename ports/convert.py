"""Convert a foreign checkpoint into the project's converted-weights format.

    python -m ports.convert SRC DST [--format FORMAT] [--network G_ema] [--overwrite]
    python -m ports.convert vgg16.pth DST --format lpips-vgg16 --heads vgg.pth   # torchvision trunk + lpips heads
    python -m ports.convert resnet50.pth DST --format resnet50 --attributes Male,Smiling --image-size 224
    python -m ports.convert moco_v2_800ep_pretrain.pth.tar DST      # MoCo v2 -> identity network (kind moco)
    python -m ports.convert modellarge10k.pt weights/styleflow      # StyleFlow's prior (kind styleflow)

FORMAT is detected from the file when not given. Each format maps to a converter function
``convert(src: Path, *, network: str | None, **options) -> magec_jax.weights.Converted`` in the module named
below; the module does the reading (via ``ports.pickles`` / ``ports.torch_files``) and its name table.
Format-specific options (``--heads``, ``--attributes``, ``--image-size``) are passed only to the converters that
take them.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
from pathlib import Path

from magec_jax.cli import error_status
from magec_jax.errors import MagecError
from magec_jax.weights import Converted, save_converted

# format -> (module, function). Kept as strings so that `--help` imports nothing heavy.
CONVERTERS: dict[str, tuple[str, str]] = {
    # StyleGAN2 generators and discriminators (ports/stylegan2/, one module per source format)
    "nvidia-pkl": ("ports.stylegan2.ada_pytorch", "convert_nvidia_pkl"),
    "tf-pkl": ("ports.stylegan2.nvlabs_tf", "convert_tf_pkl"),
    "rosinality": ("ports.stylegan2.rosinality", "convert_rosinality"),
    "state-dict": ("ports.stylegan2.ada_pytorch", "convert_state_dict"),
    # Loss networks (ports/loss_nets.py)
    "lpips-vgg16": ("ports.loss_nets", "convert_lpips_vgg16"),
    "irse50": ("ports.loss_nets", "convert_irse50"),
    "resnet50": ("ports.loss_nets", "convert_resnet50"),
    "moco": ("ports.moco", "convert_moco"),  # MoCo v2 checkpoint -> e4e's MocoLoss identity trunk
    # TensorFlow.js graph models (ports/tfjs.py)
    "tfjs-faceres": ("ports.tfjs", "convert_faceres"),
    "tfjs-emotion": ("ports.tfjs", "convert_emotion"),
    "tfjs-blazeface": ("ports.tfjs", "convert_blazeface"),
    "tfjs-facemesh": ("ports.tfjs", "convert_facemesh"),
    # StyleFlow's conditional CNF prior (ports/styleflow.py)
    "styleflow": ("ports.styleflow", "convert_styleflow"),
}


def converter_for(fmt: str):
    """The converter function of a format name."""
    module, func = CONVERTERS[fmt]
    return getattr(importlib.import_module(module), func)


def convert(src: str | Path, *, fmt: str | None = None, network: str | None = None, **options) -> Converted:
    """Reads ``src`` (format detected when ``fmt`` is None) and returns the converted network.

    ``options`` (None values ignored) go to the format's converter; one it does not take is an error.
    """
    from ports.detect import detect_format

    src = Path(src)
    fmt = fmt or detect_format(src)
    func = converter_for(fmt)
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(inspect.signature(func).parameters))
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise MagecError(f"{src}: {flags} does not apply to format {fmt}")
    return func(src, network=network, **options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ports.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="foreign checkpoint file (or TF.js model.json)")
    parser.add_argument("dst", type=Path, help="output directory (converted-weights format)")
    parser.add_argument("--format", dest="fmt", choices=sorted(CONVERTERS), help="skip auto-detection")
    parser.add_argument(
        "--network", help="which network of a multi-network file (StyleGAN2 pickles: G_ema (default), G, D)"
    )
    parser.add_argument("--heads", type=Path,
                        help="lpips-vgg16: lpips' vgg.pth lin heads, when SRC is a bare torchvision vgg16")
    parser.add_argument("--attributes", help="resnet50: comma-separated output names (default: CelebA's when K = 40)")
    parser.add_argument("--image-size", type=int, help="resnet50: the input size it was trained at (default 224)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        converted = convert(
            args.src, fmt=args.fmt, network=args.network, heads=args.heads, image_size=args.image_size,
            attribute_names=args.attributes.split(",") if args.attributes else None,
        )
        save_converted(
            args.dst, converted, source=args.src, converter=converted.manifest.get("converter", ""),
            overwrite=args.overwrite,
        )
    except (MagecError, FileExistsError) as e:
        return error_status(e)
    print(f"{args.src} -> {args.dst} ({converted.kind}, {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

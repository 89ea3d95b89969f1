"""StyleGAN2 at 64x64 on Stanford Cars, letterboxed, sized for a 2-core CPU (the cars demo's generator).

    python -m magec_jax.train_gan --config configs/cars_stylegan2.py --config.out_dir=runs/cars64

Data: ``shared/data/stanford_cars/cars128_train.tar`` (``$MAGEC_SHARED``, else ``../shared`` beside the
checkout): 7,754 car crops cut to their bounding box, 128 px on the long side, aspect ratios from about 1 to 3
(median 1.86). Each is letterboxed (``framing="letterbox"``): its long side resized to 64 with Lanczos, the aspect
ratio kept, centred on black, so no part of the car is cut and the bands carry no picture (NVIDIA's LSUN Car
models frame their data the same way, with one fixed 4:3 content box; here each image keeps its own). x-flips.
The images whose file-name hash falls below 0.1 are held out (``heldout_by="file"``: the crops have no person or
other group to keep together): 402 images, the FD figure's reference set, the cars demo's examples and its
evaluation photographs, never trained on. That is 5.2%, not a tenth, because the data's provider held back the
390 images below about 0.048 of this same hash (none of the 7,754 falls below 0.05; 381 of the 8,144 official
names do).

Networks and recipe: those of ``configs/lfw_stylegan2.py:small`` (the LFW demo generator): z, w 128-d,
2 mapping layers, channels min(2048 / R, 128) (G 1.1 M, D 1.2 M parameters), batch 32, Adam 0.0025 (0, 0.99),
R1 gamma 0.05 every 16 steps, style mixing 0.9, no path-length regularisation, G_ema half-life 10 kimg with
ramp-up 0.05. A checkpoint, sample grids and a G_ema export every 4 kimg, the FD-VGG16-LPIPS-relu5_3 figure
against the held-out images every 20 kimg. ``total_kimg`` is 2000: stop it at any time and rerun the same
command to resume.

ARG ``tiny``: a 16x16 network on the first 300 crops for tests and smoke runs (4 iterations of batch 4).
"""

import os
from pathlib import Path

from magec_jax.training.config import default_config, small_cpu_run, tiny_run

VARIANTS = {"tiny": "16x16 on 300 crops, 4 iterations: tests and smoke runs"}


def _shared() -> Path:
    env = os.environ.get("MAGEC_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def get_config(arg: str | None = None):
    config = default_config()
    config.data = str(_shared() / "data" / "stanford_cars" / "cars128_train.tar")
    config.resolution = 64
    config.framing = "letterbox"
    config.heldout_by = "file"
    config.batch_size = 32
    config.r1_gamma = 0.05
    config.ema_kimg = 10.0
    config.ema_rampup = 0.05
    config.total_kimg = 2000.0
    config.log_every = 20
    small_cpu_run(config)
    if arg == "tiny":
        tiny_run(config)
    elif arg:
        raise ValueError(f"unknown variant {arg!r} (expected none or 'tiny')")
    return config

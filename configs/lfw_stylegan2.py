"""StyleGAN2 at 64x64 on LFW deep-funneled faces, sized for a 2-core CPU.

    python -m magec_jax.train_gan --config configs/lfw_stylegan2.py --config.out_dir=runs/lfw64

Data: ``shared/data/lfw/lfw-deepfunneled.tar`` (``$MAGEC_SHARED``, else ``../shared`` beside the checkout),
read from the tar, the central 128 px of each 250x250 frame resized to 64x64 with Lanczos, x-flips. The
people whose name hashes below 0.1 are held out (500 of 5,366 people, 998 of 12,446 images): they are the
FD figure's reference set and are never trained on. The first run decodes the images once (about a minute)
into ``out_dir/data/``.

Networks: G with z, w 256-d, 4 mapping layers, channels min(4096 / R, 256) (256, 256, 256, 128, 64 at
4..64 px; 4.5 M parameters); the residual D with the same channels (4.7 M). NVIDIA's recipe otherwise:
batch 32, Adam 0.0025 (0, 0.99), R1 gamma 0.05 every 16 steps (NVIDIA's 'auto' rule 2e-4 * 64^2 / 32 gives
0.026), path-length weight 2 every 4 steps, style mixing 0.9, G_ema half-life 10 kimg with ramp-up 0.05.

Speed, measured on this project's 2-core CPU while it was shared with other engineers' jobs (load average
4.5-6.5; the run got roughly one core): 12.7 kimg/h (9.1 s per 32-image iteration, steps 20-60 of a run);
compilation takes about 3-4 minutes at the start of each run. A checkpoint, sample grids (``samples/``) and an
export of G_ema (``generator/``) every 5 kimg; the FD-VGG16-LPIPS-relu5_3 figure against the held-out
images every 25 kimg (in ``metrics.jsonl``, next to its real-vs-real reference: 3.92 with 998 images).
``total_kimg`` is 2000 (days on this CPU): stop it at any time, and rerun the same command to resume.

Expected result: blurry face-like blobs after ~20 kimg, recognisable but distorted faces after a few hundred
kimg; the FD falls towards (but stays well above) the real-vs-real reference. 64x64 StyleGAN2 needs several
thousand kimg for good samples on a GPU, so samples from a CPU run of a day or two are rough.

ARG ``small``: 5x faster for CPU runs: z, w 128-d, 2 mapping layers, channels min(2048 / R, 128) (G 1.1 M,
D 1.2 M parameters), no path-length regularisation, a checkpoint every 4 kimg and the FD every 20 kimg;
measured 62-65 kimg/h under the same shared conditions (load average ~4)::

    python -m magec_jax.train_gan --config configs/lfw_stylegan2.py:small --config.out_dir=runs/lfw64s

ARG ``tiny``: a 16x16 network on the first 300 images for tests and smoke runs: 4 iterations of batch 4, a
checkpoint every 2, the FD on 16 images; about a minute (57 s at load average ~5), most of it compilation
(with ``fast_compile``).
"""

import os
from pathlib import Path

from magec_jax.training.config import default_config, networks, small_cpu_run, tiny_run

VARIANTS = {
    "small": "5x faster for CPU runs: z, w 128-d, 2 mapping layers, channels up to 128 (the demo generator)",
    "tiny": "16x16 on 300 images, 4 iterations: tests and smoke runs",
}


def _shared() -> Path:
    env = os.environ.get("MAGEC_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def get_config(arg: str | None = None):
    config = default_config()
    config.data = str(_shared() / "data" / "lfw" / "lfw-deepfunneled.tar")
    config.resolution = 64
    config.crop = 128
    networks(config, z_dim=256, mapping_layers=4, channel_base=4096, channel_max=256)
    config.batch_size = 32
    config.r1_gamma = 0.05
    config.ema_kimg = 10.0
    config.ema_rampup = 0.05
    config.total_kimg = 2000.0
    config.log_every = 20
    config.checkpoint_kimg = 5.0
    config.metric_kimg = 25.0
    if arg == "small":
        small_cpu_run(config)
    elif arg == "tiny":
        tiny_run(config)
    elif arg:
        raise ValueError(f"unknown variant {arg!r} (expected none, 'small' or 'tiny')")
    return config

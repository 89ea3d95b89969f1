"""The paper's protocols on the official StyleGAN2 FFHQ-1024 generator (paper section 4).

    python -m magec_jax.invert --config configs/ffhq1024.py:magec \
        --config.bundle=weights/ffhq1024_bundle --config.images=celeba_hq/ --config.out_dir=out/magec

ARG is one of ``magec`` (default), ``wo_magec`` (200 steps), ``wo_magec300``, ``i2spp`` (Image2StyleGAN++:
1000 w+ steps then 1000 noise steps). ``bundle`` is a model bundle built from the user's converted weights
(`python -m magec_jax.bundle`, see docs/weights.md): StyleGAN2 FFHQ-1024, IR-SE50, a 40-attribute ResNet-50, LinkNet and
InterFaceGAN boundaries.

Expected (paper, 1000 CelebA-HQ images): MAGEC MSE 0.0040, LPIPS 0.053; w/o MAGEC 0.0094 / 0.062;
Image2StyleGAN++ 0.0012 / 0.018. Runtime: see docs/performance.md (benchmarks/invert.py); about 16 images fit a batch
on a 78 GiB GPU at 1024 in float32.
"""

from magec_jax.inversion.protocols import job_config

VARIANTS = {
    "magec": "MSE + LPIPS + ID + MAGEC, 100 + 100 steps (the paper's protocol)",
    "wo_magec": "the same without the MAGEC term (l_magec = 0)",
    "wo_magec300": "without MAGEC, 150 + 150 steps",
    "i2spp": "Image2StyleGAN++: MSE + LPIPS, 1000 w+ steps then 1000 noise steps",
}


def get_config(arg: str = "magec"):
    config = job_config(arg or "magec")
    config.bundle = "weights/ffhq1024_bundle"
    config.images = "images"
    config.out_dir = f"out/ffhq1024_{arg or 'magec'}"
    config.batch_size = 16
    return config

"""A tiny MAGEC inversion for tests and smoke runs: the full protocol shortened to 5 + 5 steps.

    python -m magec_jax.invert --config configs/tiny.py --config.bundle=BUNDLE --config.images=DIR \
        --config.out_dir=OUT

Runs in seconds on a 2-core CPU with a 32x32 bundle (as the test suite builds); the loss goes down but
10 steps do not reconstruct anything well (``steps_scale`` 0.05 of each protocol). ARG picks the protocol
(default ``magec``).
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
    config.steps_scale = 0.05
    config.name = f"tiny_{arg or 'magec'}"
    config.batch_size = 2
    return config

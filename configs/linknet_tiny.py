"""A tiny supervision run for tests and smoke runs: 96 samples per variant, 2 epochs, 10% boundary tails.

    python -m magec_jax.linknet --config configs/linknet_tiny.py --config.bundle=BUNDLE

Meant for the 32x32 bundle the test suite builds (random generator, real faceres+emotion descriptor): runs
in about 20 s on a 2-core CPU, mostly the descriptor on 192 images. The training loss goes down; accuracies
mean little on a random generator. ARG picks the stages (default ``both``).
"""

from magec_jax.supervision.job import default_config

VARIANTS = {
    "both": "LinkNet and the boundaries",
    "linknet": "LinkNet only",
    "boundaries": "the InterFaceGAN boundaries only",
    "none": "neither (with ganspace.enabled: the GANSpace PCA only)",
}


def get_config(arg: str = "both"):
    config = default_config()
    config.fit = arg or "both"
    config.sampling.num_samples = 96
    config.sampling.batch_size = 32
    config.sampling.shard_size = 32
    config.linknet.epochs = 2
    config.linknet.batch_size = 16
    config.boundaries.num_samples = 96
    config.boundaries.ratio = 0.1
    config.ganspace.num_samples = 512
    config.ganspace.num_components = 8
    config.ganspace.batch_size = 256
    return config

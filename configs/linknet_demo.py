"""Supervision of the demo bundle (LFW 64x64 generator, faceres+emotion Male/Young/Smiling descriptor).

    python -m magec_jax.linknet --config configs/linknet_demo.py --config.bundle=demo/bundle

5,000 samples per variant (per-layer-mixed W+ for LinkNet, single w for the boundaries): the cost is the
descriptor at 224x224 on every sample, about 5-10 minutes on a 2-core CPU. Boundaries: InterFaceGAN's recipe
on the top and bottom 2% (100 samples per side). Validation accuracies are written to the bundle
(linknet manifest ``extra`` and ``directions_fit.json``); tools/build_demo.py runs this as one of its steps.
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
    config.sampling.num_samples = 5_000
    config.sampling.batch_size = 32
    config.sampling.shard_size = 1_000
    config.ganspace.enabled = True
    config.ganspace.num_samples = 20_000
    config.ganspace.num_components = 32
    return config

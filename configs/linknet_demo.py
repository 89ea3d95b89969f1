"""Supervision of the demo bundle (LFW 64x64 generator, faceres+emotion Male/Young/Smiling descriptor).

    python -m magec_jax.linknet --config configs/linknet_demo.py --config.bundle=demo/bundle

LinkNet: the paper's N = 50,000 per-layer-mixed W+ samples (45,000 train, 5,000 validation), 10 epochs,
Adam lr 1e-3, with the CLASS-BALANCED loss (each class weighed by its inverse frequency; a deviation from the
paper's plain loss). Measured on the demo bundle (``docs/eval_demo/linknet.json``, both losses on the same
samples): balanced validation accuracy Male 0.750 / Young 0.689 / Smiling 0.744 with it, against 0.656 /
0.680 / 0.724 with the plain loss, which mostly predicts the majority class (76% of samples are labelled Male).
``--config.linknet.class_balanced=False`` gives the paper's loss. Boundaries: 10,000 single-w samples,
InterFaceGAN's recipe on the top and bottom 2% (200 samples per side). The cost is the descriptor at 224x224
on every sample: 9-10 samples/s on the 2-core CPU (``benchmarks/supervision.py``), about 2 hours for the
60,000; the samples are cached (the face descriptor's threshold-free scores), so a rerun, or a recalibration
of the thresholds, renders nothing.
Plain and balanced validation accuracies are written to the bundle (linknet manifest ``extra`` and
``directions_fit.json``); tools/build_demo.py runs this as one of its steps, with the thresholds calibrated
for generated samples (docs/demo.md, "How the demo bundle was built").
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
    config.sampling.num_samples = 50_000
    config.sampling.batch_size = 32
    config.sampling.shard_size = 1_000
    config.boundaries.num_samples = 10_000
    config.linknet.class_balanced = True
    config.ganspace.enabled = True
    config.ganspace.num_samples = 20_000
    config.ganspace.num_components = 32
    return config

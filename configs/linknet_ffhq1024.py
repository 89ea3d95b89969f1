"""LinkNet and InterFaceGAN boundaries for the FFHQ-1024 bundle, with the paper's settings (METHOD.md).

    python -m magec_jax.linknet --config configs/linknet_ffhq1024.py --config.bundle=weights/ffhq1024_bundle

Renders N = 50,000 per-layer-mixed samples (LinkNet: Adam lr 1e-3, 10 epochs, 10% held out) and 50,000
single-w samples (one boundary per attribute of the bundle's descriptor F: SVM on the top/bottom 2%, 70/30
split), labels them with F, and writes ``linknet/``, ``directions.npz`` and ``directions_fit.json`` into the
bundle. ARG ``linknet`` or ``boundaries`` runs one stage (default: both); add ``--config.ganspace.enabled=True``
for a GANSpace PCA of 100,000 mapped w. The samples are cached in ``BUNDLE/supervision/`` (about 1.8 GB for
the mixed latents): an interrupted run resumes, a rerun only retrains.

Runtime: dominated by rendering and labelling 100,000 images at 1024 (about 151 GFLOP of G each,
PERFORMANCE.md): an estimate of well under an hour on one H100, not yet measured; LinkNet training (10 epochs
of 45,000 latents) and the SVMs take a minute or two. On a CPU the rendering takes days. Expected: the thesis reports 89% mean validation accuracy for the 40 CelebA
attributes of its ResNet-50 F; boundaries fit with high SVM accuracy (InterFaceGAN: above 90% for clear
attributes such as Male and Smiling).
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
    config.bundle = "weights/ffhq1024_bundle"
    config.matmul_precision = "default"  # labelling tolerates TF32 on GPUs; training is tiny either way
    return config

"""Train a bundle's LinkNet and fit its editing directions from generated, F-labelled samples.

    python -m magec_jax.linknet --config configs/linknet_ffhq1024.py --config.bundle=weights/ffhq1024_bundle
    python -m magec_jax.linknet --config configs/linknet_ffhq1024.py --config.fit=boundaries

``config.fit`` picks the stages: ``linknet`` (per-layer-mixed samples -> LinkNet), ``boundaries`` (single-w
samples -> one InterFaceGAN boundary per attribute of F), ``both``, or ``none``; ``config.ganspace.enabled``
adds a GANSpace PCA. Results go into the bundle (``linknet/``, ``directions.npz``, ``ganspace.npz``) and its
manifest; rendered samples are cached under ``BUNDLE/supervision/``, so a rerun renders only what is missing.
See ``magec_jax.supervision.job``.
"""

import sys

from magec_jax.cli import config_main
from magec_jax.supervision.job import run

__all__ = ["main", "run"]

main = config_main(run, __doc__, prog="magec_jax.linknet", example="linknet_demo.py")

if __name__ == "__main__":
    sys.exit(main())

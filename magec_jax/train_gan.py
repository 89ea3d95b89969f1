"""Train a StyleGAN2 generator (with a residual discriminator) on a folder or tar of face images.

    python -m magec_jax.train_gan --config configs/lfw_stylegan2.py --config.out_dir=runs/lfw64

NVIDIA's StyleGAN2 recipe (non-saturating logistic loss, lazy R1 and path-length regularisation, style
mixing, G_ema, Adam with betas (0, 0.99)); see ``magec_jax/training/gan.py``. Rerunning the same command
resumes from the latest checkpoint in ``out_dir``. Outputs (``magec_jax/training/loop.py``): checkpoints,
sample grids, ``metrics.jsonl`` with the FD-VGG16-LPIPS-relu5_3 figure against held-out people, and the
latest G_ema as a converted generator in ``out_dir/generator`` (``python -m magec_jax.generate
--generator RUN/generator --seeds 0-15 --out grid.png``).
"""

import sys

from magec_jax.cli import config_main
from magec_jax.training.loop import run

__all__ = ["main", "run"]

main = config_main(run, __doc__, prog="magec_jax.train_gan", example="lfw_stylegan2.py")

if __name__ == "__main__":
    sys.exit(main())

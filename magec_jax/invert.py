"""Invert a folder of images into editable W+ latents (MAGEC or a baseline, as the config says).

    python -m magec_jax.invert --config configs/demo.py
    python -m magec_jax.invert --config configs/demo.py --config.steps_scale=0.1 --config.out_dir=out/demo_quick
    python -m magec_jax.invert --config configs/ffhq1024.py:magec --config.images=faces/ --config.out_dir=out/
    python -m magec_jax.invert --help --config configs/demo.py:i2spp    # every field, and the variants

Outputs (per image ``<name>``: ``.npz`` latent, ``.png`` reconstruction, ``.json`` losses and fingerprint; plus
``summary.json`` with every run's record) are described in ``magec_jax.inversion.job``. Re-running the same
command resumes; results computed with other settings are refused in one line unless
``--config.on_mismatch=recompute``. ``--config.steps_scale`` shortens any protocol.
"""

import sys

from magec_jax.cli import config_main
from magec_jax.inversion.job import run

__all__ = ["main", "run"]

main = config_main(run, __doc__, prog="magec_jax.invert", example="demo.py")

if __name__ == "__main__":
    sys.exit(main())

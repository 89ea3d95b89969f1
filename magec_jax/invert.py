"""Invert a folder of images into editable W+ latents (MAGEC or a baseline, as the config says).

    python -m magec_jax.invert --config configs/demo.py
    python -m magec_jax.invert --config configs/ffhq1024.py:magec --config.images=faces/ --config.out_dir=out/

Outputs (per image ``<name>``: ``.npz`` latent, ``.png`` reconstruction, ``.json`` losses; plus
``summary.json``) are described in ``magec_jax.inversion.job``. Re-running the same command resumes.
"""

import sys

from magec_jax.cli import config_main
from magec_jax.inversion.job import run

__all__ = ["main", "run"]

main = config_main(run, __doc__, prog="magec_jax.invert", example="demo.py")

if __name__ == "__main__":
    sys.exit(main())

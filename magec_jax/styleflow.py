"""Train a StyleFlow prior (the paper's fourth editor) for a bundle's generator, and store it in the bundle.

    python -m magec_jax.styleflow --config configs/styleflow_demo.py
    python -m magec_jax.styleflow --config configs/styleflow_demo.py --config.bundle=B --config.out_dir=runs/flow

Samples single-w latents of the bundle's generator labelled by its descriptor F (cached, shared with the
boundary fit), trains StyleFlow's conditional CNF on them by maximum likelihood (the official recipe: Hutchinson
trace, learnt end time, dopri5 at 1e-5), reports the held-out negative log-likelihood, and saves the prior as
``BUNDLE/styleflow`` (named in the manifest) for ``magec_jax.edit --styleflow``. A rerun resumes from the
latest checkpoint in ``out_dir``. See ``magec_jax.supervision.styleflow``.
"""

import sys

from magec_jax.cli import config_main
from magec_jax.supervision.styleflow import run

__all__ = ["main", "run"]

main = config_main(run, __doc__, prog="magec_jax.styleflow", example="styleflow_demo.py")

if __name__ == "__main__":
    sys.exit(main())

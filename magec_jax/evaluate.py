"""Compare inversion methods on reconstruction and editability (paper section 4.2): MSE, LPIPS, steps, time,
Edit-Consistency Score per edit, realism of the edits, improved-target score t, paired t-tests, figures.

    python -m magec_jax.evaluate --config configs/eval_tiny.py --config.bundle=BUNDLE \
        --config.images=faces/ --config.out_dir=out/eval
    python -m magec_jax.evaluate --config configs/eval_ffhq1024.py

Re-running the same command resumes: finished inversions, edits, re-projections and scores are kept.
Outputs and stages are described in ``magec_jax.evaluation.pipeline`` and ``magec_jax.evaluation.report``.
"""

import sys

from magec_jax.cli import config_main
from magec_jax.evaluation.pipeline import run

__all__ = ["main", "run"]

main = config_main(run, __doc__, prog="magec_jax.evaluate", example="eval_demo.py")

if __name__ == "__main__":
    sys.exit(main())

"""Evaluation of inversion methods: reconstruction, Edit-Consistency Score, realism, improved-target score,
paired t-tests, report and figures (``python -m magec_jax.evaluate``)."""

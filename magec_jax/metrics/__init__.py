"""Evaluation metrics: the realism score and k-NN precision/recall (:mod:`magec_jax.metrics.realism`)."""

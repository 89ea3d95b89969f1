"""magec_jax: MAGEC GAN inversion for realistic editing, in JAX/Flax.

Data flow: foreign weights (``ports/``) -> converted weights (``magec_jax.weights``) -> models
(``magec_jax.models``) -> losses -> inversion engine (``magec_jax.inversion``) -> edits and metrics.
"""

__version__ = "0.1.0"

"""GAN training: data pipeline (``data``), losses and compiled steps (``gan``), the quality figure (``fd``),
the config (``config``) and the run loop (``loop``) behind ``python -m magec_jax.train_gan``."""

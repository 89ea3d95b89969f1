"""Training the attribute descriptor F (a ResNet-50 with K sigmoid outputs): the config (``config``), the
attribute table and image loader (``data``), the optimiser and compiled steps (``steps``) and the run loop
(``loop``) behind ``python -m magec_jax.train_classifier``."""

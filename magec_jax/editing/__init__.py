"""Latent editing: direction files and edits (``directions``: InterFaceGAN boundaries loaded and fitted,
GANSpace, interpolation) and their rendering (``render``: the library behind ``python -m magec_jax.edit``
and the inversion's edit-grid stage; it receives a loaded bundle)."""

"""Supervision for MAGEC from generated images: samples of G labelled by F (:mod:`.samples`), LinkNet
training (:mod:`.train`), and the job that fits a bundle's LinkNet, InterFaceGAN boundaries and GANSpace
(:mod:`.job`, ``python -m magec_jax.linknet``)."""

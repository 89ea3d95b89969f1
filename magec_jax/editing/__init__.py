"""Latent editing: InterFaceGAN boundaries, GANSpace, interpolation."""

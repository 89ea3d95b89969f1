"""Flax networks: the StyleGAN2 generator, the loss networks and the descriptor/identity interface."""

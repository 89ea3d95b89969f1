"""StyleGAN2 generator (mapping + synthesis, skip architecture) in Flax Linen.

Numerically equal to NVIDIA stylegan2-ada-pytorch ``training/networks.py`` @ d72cc7d (``Generator``,
``MappingNetwork``, ``SynthesisNetwork``, ``SynthesisBlock``, ``SynthesisLayer``, ``ToRGBLayer``), in eval
mode. Module and leaf names mirror NVIDIA's, so the converters in ``ports/stylegan2/`` map names one to
one; only layouts differ (NHWC activations, HWIO kernels, ``[in, out]`` dense kernels)::

    params/mapping/fc{i}/{weight [in, out], bias [out]}          stored raw; gains applied at run time
    params/mapping/embed/{weight [c_dim, E], bias [E]}            only when c_dim > 0
    params/synthesis/b4/const [4, 4, C4]                          HWC
    params/synthesis/b{R}/conv{0,1}/{weight [3, 3, I, O], bias [O], noise_strength [],
                                     affine/{weight [w_dim, I], bias [I]}}    (b4 has conv1 only)
    params/synthesis/b{R}/torgb/{weight [1, 1, C, img_channels], bias [img_channels], affine/...}
    buffers/mapping/w_avg [w_dim]
    buffers/synthesis/b{R}/conv{0,1}/noise_const [R, R]
    frozen/synthesis/b{R}/{conv0,conv1,torgb}/conv  ops.FrozenConv   optional: see freeze_synthesis

Typical use (``ws`` is ``[B, w_dim]`` or W+ ``[B, num_ws, w_dim]``; images are NHWC, about [-1, 1] for a
trained network, not clamped)::

    cfg, variables = load_generator("converted/ffhq")
    G = Generator(cfg)
    ws = G.apply(variables, z, method="mapping", truncation_psi=0.7)
    img_BxHxWxC = G.apply(variables, ws, method="synthesis", noise_mode="const")

An inversion renders with fixed weights many times: :func:`freeze_synthesis` adds the ``frozen`` collection of
per-layer constants (``ops.freeze_conv``), computed once, which the layers then use instead of re-deriving them
at every call; with it the weights are constants (no gradient flows to them). ``Generator(remat=True)``
rematerialises each synthesis block in the backward pass (``jax.checkpoint``), trading a second forward pass
for the memory of the blocks' activations.

``w`` index sharing follows NVIDIA: block ``b4`` reads ``ws[:, 0]`` (conv1) and ``ws[:, 1]`` (torgb); block
``R`` reads ``ws[:, i]``, ``ws[:, i+1]``, ``ws[:, i+2]`` (conv0, conv1, torgb) with ``i = 2*log2(R) - 5``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from magec_jax import ops
from magec_jax.weights import load_converted

NoiseMode = Literal["const", "random", "none"]
KIND = "stylegan2"
FROZEN = "frozen"  # variable collection of precomputed per-layer constants (freeze_synthesis)


@dataclasses.dataclass(frozen=True)
class StyleGAN2Config:
    """Architecture of a StyleGAN2 generator (NVIDIA ``Generator`` init kwargs, flattened).

    Attributes:
      z_dim: latent z size.
      c_dim: class-label size (0: unconditional).
      w_dim: intermediate latent size.
      img_resolution: output resolution, a power of two >= 4.
      img_channels: output channels.
      mapping_layers: number of mapping-network dense layers.
      mapping_lr_multiplier: equalised-lr multiplier of the mapping layers.
      layer_features: width of the hidden mapping layers (None: w_dim).
      embed_features: width of the class embedding (None: w_dim); used only when c_dim > 0.
      channel_base: channels at resolution R are ``min(channel_base // R, channel_max)``.
      channel_max: see ``channel_base``.
      conv_clamp: clamp of every synthesis-layer and ToRGB output (None: no clamp).
      num_fp16_res: NVIDIA runs this many top resolutions in fp16; kept as a hint only (this port computes
        in ``Generator.dtype``).
      architecture: only ``'skip'`` (the StyleGAN2 generator default) is implemented.
    """

    z_dim: int = 512
    c_dim: int = 0
    w_dim: int = 512
    img_resolution: int = 1024
    img_channels: int = 3
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    layer_features: int | None = None
    embed_features: int | None = None
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = None
    num_fp16_res: int = 0
    architecture: str = "skip"

    def __post_init__(self):
        # Canonical form: a width equal to w_dim is stored as None, so that equal architectures read from
        # different formats (TF pickles spell the default out) compare and hash equal.
        for name in ("layer_features", "embed_features"):
            if getattr(self, name) == self.w_dim:
                object.__setattr__(self, name, None)
        res = self.img_resolution
        if res < 4 or res & (res - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {res}")
        if self.architecture != "skip":
            raise ValueError(f"architecture {self.architecture!r} is not implemented (only 'skip')")
        if self.mapping_layers < 1 or self.w_dim < 1 or self.z_dim + self.c_dim < 1:
            raise ValueError(f"degenerate mapping network: {self}")
        bad = [r for r in self.block_resolutions if self.channels(r) < 1]
        if bad:
            raise ValueError(f"channel_base={self.channel_base} gives no channels at resolutions {bad}")

    @property
    def block_resolutions(self) -> tuple[int, ...]:
        """``(4, 8, ..., img_resolution)``."""
        return tuple(2**i for i in range(2, int(math.log2(self.img_resolution)) + 1))

    @property
    def num_ws(self) -> int:
        """Rows of W+: ``2 * log2(img_resolution) - 2``."""
        return 2 * int(math.log2(self.img_resolution)) - 2

    def channels(self, res: int) -> int:
        """Feature channels of the block at resolution ``res``."""
        return min(self.channel_base // res, self.channel_max)

    def to_dict(self) -> dict:
        """JSON-able dict; :func:`config_from_dict` inverts it."""
        return dataclasses.asdict(self)


def config_from_dict(d: Mapping[str, Any]) -> StyleGAN2Config:
    """Builds a :class:`StyleGAN2Config` from :meth:`StyleGAN2Config.to_dict` output; unknown keys are an error."""
    known = {f.name for f in dataclasses.fields(StyleGAN2Config)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown StyleGAN2 config keys {unknown}")
    return StyleGAN2Config(**d)


def noise_shapes(cfg: StyleGAN2Config) -> tuple[tuple[str, tuple[int, int]], ...]:
    """``(layer name, (H, W))`` of every noise input, in the order ``synthesis(noise=...)`` takes them.

    The order is ``b4/conv1, b8/conv0, b8/conv1, b16/conv0, ...`` (rosinality's ``noises.noise_{i}`` order).
    """
    shapes = []
    for res in cfg.block_resolutions:
        for conv in ("conv1",) if res == 4 else ("conv0", "conv1"):
            shapes.append((f"b{res}/{conv}", (res, res)))
    return tuple(shapes)


def truncate(ws_BxLxD: jax.Array, w_avg_D: jax.Array, psi: float | jax.Array, cutoff: int | None = None) -> jax.Array:
    """Truncation trick ``w_avg + psi * (w - w_avg)`` on the rows ``< cutoff`` (all rows when None).

    Works on mapping outputs and on any W+ latent (NVIDIA truncates only inside ``mapping``; a W+ input
    is truncated by hand, as rosinality does).
    """
    w_avg_1x1xD = jnp.asarray(w_avg_D).reshape(1, 1, -1)
    truncated = w_avg_1x1xD + psi * (ws_BxLxD - w_avg_1x1xD)
    if cutoff is None:
        return truncated
    return ws_BxLxD.at[:, :cutoff].set(truncated[:, :cutoff])


def seed_latents(seeds: Sequence[int], z_dim: int) -> np.ndarray:
    """z ``[len(seeds), z_dim]`` float32, drawn per seed as NVIDIA's scripts do (``RandomState(seed).randn(1,
    z_dim)``), so that a seed gives the same image as NVIDIA's code with the same network."""
    return np.concatenate([np.random.RandomState(s).randn(1, z_dim) for s in seeds]).astype(np.float32)


def _normal_init(scale: float = 1.0):
    return lambda key, shape: jax.random.normal(key, shape, jnp.float32) * scale


def _const_init(value: float):
    return lambda key, shape: jnp.full(shape, value, jnp.float32)


class Dense(nn.Module):
    """Equalised-lr dense layer (NVIDIA ``FullyConnectedLayer``): raw weight ``[in, out]`` and bias stored."""

    features: int
    lr_multiplier: float = 1.0
    bias_init: float = 0.0
    act: ops.Activation = "linear"

    @nn.compact
    def __call__(self, x_BxI: jax.Array) -> jax.Array:
        w_IxO = self.param("weight", _normal_init(1.0 / self.lr_multiplier), (x_BxI.shape[-1], self.features))
        b_O = self.param("bias", _const_init(self.bias_init), (self.features,))
        return ops.dense(x_BxI, w_IxO, b_O, lr_multiplier=self.lr_multiplier, act=self.act)


class MappingNetwork(nn.Module):
    """z (and c) -> ws ``[B, num_ws, w_dim]``, with optional truncation towards the ``w_avg`` buffer."""

    cfg: StyleGAN2Config

    @nn.compact
    def __call__(
        self,
        z_BxZ: jax.Array,
        c_BxC: jax.Array | None = None,
        *,
        truncation_psi: float | jax.Array = 1.0,
        truncation_cutoff: int | None = None,
    ) -> jax.Array:
        cfg = self.cfg
        hidden = cfg.layer_features or cfg.w_dim
        parts = []
        if cfg.z_dim > 0:
            parts.append(ops.normalize_2nd_moment(z_BxZ.astype(jnp.float32)))
        if cfg.c_dim > 0:
            if c_BxC is None:
                raise ValueError(f"this generator is class-conditional (c_dim={cfg.c_dim}); pass c")
            embed = Dense(cfg.embed_features or cfg.w_dim, name="embed")(c_BxC.astype(jnp.float32))
            parts.append(ops.normalize_2nd_moment(embed))
        x = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        for i in range(cfg.mapping_layers):
            features = cfg.w_dim if i == cfg.mapping_layers - 1 else hidden
            x = Dense(features, lr_multiplier=cfg.mapping_lr_multiplier, act="lrelu", name=f"fc{i}")(x)
        w_avg_D = self.variable("buffers", "w_avg", jnp.zeros, (cfg.w_dim,), jnp.float32).value
        ws_BxLxD = jnp.broadcast_to(x[:, None, :], (x.shape[0], cfg.num_ws, cfg.w_dim))
        if isinstance(truncation_psi, (int, float)) and truncation_psi == 1:
            return ws_BxLxD
        return truncate(ws_BxLxD, w_avg_D, truncation_psi, truncation_cutoff)


def _noise_BxHxWx1(explicit: jax.Array | None, const_HxW: jax.Array, mode: NoiseMode, key, shape_BxHxW):
    """The noise a synthesis layer adds (before strength), ``[B or 1, H, W, 1]``, or None."""
    if explicit is not None:
        if explicit.ndim not in (2, 3) or explicit.shape[-2:] != shape_BxHxW[1:]:
            raise ValueError(
                f"explicit noise must be [H,W] or [B,H,W] with H,W={shape_BxHxW[1:]}, got {explicit.shape}"
            )
        noise = explicit if explicit.ndim == 3 else explicit[None]
    elif mode == "const":
        noise = const_HxW[None]
    elif mode == "random":
        if key is None:
            raise ValueError("noise_mode='random' needs a key")
        noise = jax.random.normal(key, shape_BxHxW, jnp.float32)
    elif mode == "none":
        return None
    else:
        raise ValueError(f"unknown noise_mode {mode!r}")
    return noise[..., None]


def _frozen(layer: nn.Module) -> ops.FrozenConv | None:
    """The layer's precomputed kernel constants when the variables carry them (:func:`freeze_synthesis`)."""
    return layer.get_variable(FROZEN, "conv") if layer.has_variable(FROZEN, "conv") else None


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (up-sampling when ``up == 2``) + noise + bias + lrelu*sqrt(2) + clamp."""

    out_channels: int
    resolution: int
    up: int = 1
    conv_clamp: float | None = None
    fused_modconv: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxI, w_BxD, noise_mode: NoiseMode, noise=None, key=None):
        """Returns ``(out_BxRxRxO, styles_BxI)``. ``noise_mode`` is positional so that a rematerialised layer
        can take it as a static argument."""
        in_channels = x_BxHxWxI.shape[-1]
        styles_BxI = Dense(in_channels, bias_init=1.0, name="affine")(w_BxD)
        weight = self.param("weight", _normal_init(), (3, 3, in_channels, self.out_channels))
        strength = self.param("noise_strength", _const_init(0.0), ())
        bias = self.param("bias", _const_init(0.0), (self.out_channels,))
        res = self.resolution
        noise_const = self.variable(
            "buffers", "noise_const", lambda: jax.random.normal(self.make_rng("params"), (res, res), jnp.float32)
        ).value
        x = ops.modulated_conv2d(
            x_BxHxWxI.astype(self.dtype), weight, styles_BxI, up=self.up, fused=self.fused_modconv,
            frozen=_frozen(self),
        )
        noise = _noise_BxHxWx1(noise, noise_const, noise_mode, key, (x.shape[0], res, res))
        if noise is not None:
            x = x + (noise * strength).astype(self.dtype)
        x = ops.bias_act(x, bias, act="lrelu", clamp=self.conv_clamp)
        return x, styles_BxI


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv without demodulation + bias + clamp (no activation)."""

    img_channels: int
    conv_clamp: float | None = None
    fused_modconv: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxI, w_BxD):
        """Returns ``(rgb_BxHxWxC, styles_BxI)``; the styles before the 1/sqrt(I) weight gain."""
        in_channels = x_BxHxWxI.shape[-1]
        styles_BxI = Dense(in_channels, bias_init=1.0, name="affine")(w_BxD)
        weight = self.param("weight", _normal_init(), (1, 1, in_channels, self.img_channels))
        bias = self.param("bias", _const_init(0.0), (self.img_channels,))
        y = ops.modulated_conv2d(
            x_BxHxWxI, weight, styles_BxI / math.sqrt(in_channels), demodulate=False, fused=self.fused_modconv,
            frozen=_frozen(self),
        )
        return ops.bias_act(y, bias, clamp=self.conv_clamp), styles_BxI


class SynthesisBlock(nn.Module):
    """One resolution: [const |] conv0 (up) + conv1, and ToRGB added to the up-sampled skip image."""

    in_channels: int  # 0 for the 4x4 block, which starts from the learned constant
    out_channels: int
    resolution: int
    img_channels: int
    conv_clamp: float | None = None
    fused_modconv: bool = False
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x, img, ws_BxNxD, *, noise_mode: NoiseMode, noises, keys):
        """``ws_BxNxD`` holds this block's rows (conv0?, conv1, torgb); returns ``(x, img, intermediates)``.

        With ``remat``, each layer is rematerialised in the backward pass: only layer inputs are kept. (Whole
        blocks would keep less, but the top block's activations alone are most of the memory at 1024.)
        """
        layer_kw = {"conv_clamp": self.conv_clamp, "fused_modconv": self.fused_modconv, "dtype": self.dtype}
        # self, x, w, noise_mode: noise_mode (a string) is static.
        synthesis_layer = nn.remat(SynthesisLayer, static_argnums=(3,)) if self.remat else SynthesisLayer
        torgb_layer = nn.remat(ToRGBLayer) if self.remat else ToRGBLayer
        inter = {}
        batch = ws_BxNxD.shape[0]
        if self.in_channels == 0:
            const = self.param("const", _normal_init(), (self.resolution, self.resolution, self.out_channels))
            x = jnp.broadcast_to(const.astype(self.dtype)[None], (batch,) + const.shape)
            convs = ("conv1",)
        else:
            convs = ("conv0", "conv1")
        for i, name in enumerate(convs):
            layer = synthesis_layer(
                self.out_channels, self.resolution, up=2 if name == "conv0" else 1, name=name, **layer_kw
            )
            x, inter[f"{name}/style"] = layer(x, ws_BxNxD[:, i], noise_mode, noises[i], keys[i])
            inter[f"{name}/out"] = x
        torgb = torgb_layer(self.img_channels, name="torgb", **layer_kw)
        y, inter["torgb/style"] = torgb(x, ws_BxNxD[:, len(convs)])
        y = y.astype(jnp.float32)  # the skip image accumulates in float32, as NVIDIA's
        img = y if img is None else ops.upsample2d(img) + y
        inter["torgb/out"], inter["x"], inter["img"] = y, x, img
        return x, img, inter


class SynthesisNetwork(nn.Module):
    """ws ``[B, w_dim]`` or ``[B, num_ws, w_dim]`` -> images ``[B, R, R, img_channels]``, float32, not clamped."""

    cfg: StyleGAN2Config
    fused_modconv: bool = False
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(
        self,
        ws: jax.Array,
        *,
        noise_mode: NoiseMode = "const",
        noise: Sequence[jax.Array | None] | None = None,
        key: jax.Array | None = None,
        return_intermediates: bool = False,
    ):
        cfg = self.cfg
        if ws.ndim == 2:
            ws = jnp.broadcast_to(ws[:, None, :], (ws.shape[0], cfg.num_ws, ws.shape[1]))
        if ws.ndim != 3 or ws.shape[1:] != (cfg.num_ws, cfg.w_dim):
            raise ValueError(f"ws must be [B, {cfg.w_dim}] or [B, {cfg.num_ws}, {cfg.w_dim}], got {ws.shape}")
        ws = ws.astype(jnp.float32)
        n_noise = len(noise_shapes(cfg))
        if noise is not None and len(noise) != n_noise:
            raise ValueError(f"noise must list {n_noise} maps (see noise_shapes), got {len(noise)}")
        noise = list(noise) if noise is not None else [None] * n_noise
        keys = [None] * n_noise if key is None else list(jax.random.split(key, n_noise))
        x = img = None
        inter = {}
        w_idx = noise_idx = 0
        for res in cfg.block_resolutions:
            num_conv = 1 if res == 4 else 2
            block = SynthesisBlock(
                in_channels=0 if res == 4 else cfg.channels(res // 2),
                out_channels=cfg.channels(res),
                resolution=res,
                img_channels=cfg.img_channels,
                conv_clamp=cfg.conv_clamp,
                fused_modconv=self.fused_modconv,
                dtype=self.dtype,
                remat=self.remat,
                name=f"b{res}",
            )
            sl = slice(noise_idx, noise_idx + num_conv)
            x, img, block_inter = block(
                x, img, ws[:, w_idx : w_idx + num_conv + 1], noise_mode=noise_mode, noises=noise[sl], keys=keys[sl]
            )
            inter.update({f"b{res}/{k}": v for k, v in block_inter.items()})
            w_idx += num_conv
            noise_idx += num_conv
        return (img, inter) if return_intermediates else img


class Generator(nn.Module):
    """StyleGAN2 generator: ``mapping`` (z, c -> ws) and ``synthesis`` (ws -> images), pure apply methods.

    Attributes:
      cfg: the architecture.
      dtype: compute dtype of the synthesis convolutions (float32 default; bfloat16 for speed). Styles,
        demodulation and the skip image stay float32.
      fused_modconv: per-sample kernels in one grouped convolution (NVIDIA's eval path) instead of scaling
        activations (equal up to rounding; see ``ops.modulated_conv2d``).
      remat: rematerialise every synthesis layer in the backward pass (same values, less memory, about one
        more forward pass of compute).
    """

    cfg: StyleGAN2Config
    dtype: Any = jnp.float32
    fused_modconv: bool = False
    remat: bool = False

    def setup(self):
        self.mapping_network = MappingNetwork(self.cfg, name="mapping")
        self.synthesis_network = SynthesisNetwork(
            self.cfg, fused_modconv=self.fused_modconv, dtype=self.dtype, remat=self.remat, name="synthesis"
        )

    def __call__(
        self,
        z_BxZ: jax.Array,
        c_BxC: jax.Array | None = None,
        *,
        truncation_psi: float | jax.Array = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: NoiseMode = "const",
        noise: Sequence[jax.Array | None] | None = None,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """z (and c) -> images ``[B, R, R, C]``; see :meth:`mapping` and :meth:`synthesis`."""
        ws = self.mapping(z_BxZ, c_BxC, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, noise=noise, key=key)

    def mapping(
        self,
        z_BxZ: jax.Array,
        c_BxC: jax.Array | None = None,
        *,
        truncation_psi: float | jax.Array = 1.0,
        truncation_cutoff: int | None = None,
    ) -> jax.Array:
        """z ``[B, z_dim]`` (and one-hot or soft c ``[B, c_dim]``) -> ws ``[B, num_ws, w_dim]``.

        Truncation (``psi != 1``) moves the rows ``< truncation_cutoff`` (all when None) towards ``w_avg``.
        """
        return self.mapping_network(z_BxZ, c_BxC, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)

    def synthesis(
        self,
        ws: jax.Array,
        *,
        noise_mode: NoiseMode = "const",
        noise: Sequence[jax.Array | None] | None = None,
        key: jax.Array | None = None,
        return_intermediates: bool = False,
    ):
        """ws ``[B, w_dim]`` or W+ ``[B, num_ws, w_dim]`` -> images ``[B, R, R, C]`` float32, not clamped.

        Args:
          ws: latents; a ``[B, w_dim]`` w is used for every layer.
          noise_mode: ``'const'`` (the ``noise_const`` buffers), ``'random'`` (fresh N(0,1) from ``key``,
            per sample) or ``'none'``.
          noise: optional explicit noise maps, one per entry of :func:`noise_shapes`, each ``[H, W]``
            (shared by the batch), ``[B, H, W]``, or None (that layer follows ``noise_mode``). Multiplied by
            the layer's ``noise_strength``, like the buffers.
          key: PRNG key for ``noise_mode='random'``.
          return_intermediates: also return a dict of per-layer and per-block values: ``'b{R}/{conv0,
            conv1,torgb}/style'`` (affine outputs ``[B, I]``), ``'b{R}/{conv0,conv1}/out'``,
            ``'b{R}/torgb/out'`` (that block's RGB before the skip sum), ``'b{R}/x'`` and ``'b{R}/img'``
            (the block outputs, NHWC).
        """
        return self.synthesis_network(
            ws, noise_mode=noise_mode, noise=noise, key=key, return_intermediates=return_intermediates
        )


def freeze_synthesis(cfg: StyleGAN2Config, variables: dict, *, dtype: Any = jnp.float32) -> dict:
    """``variables`` plus the ``frozen`` collection: every synthesis layer's ``ops.freeze_conv`` constants.

    For rendering many times with fixed weights (inversion): the layers then convolve with the precomputed
    kernels (stored in ``dtype``, the generator's compute dtype) and take their gradient through precomputed
    flipped kernels, instead of re-deriving both at every call. The weights become constants of the
    computation: differentiate the frozen variables with respect to latents or noise only.
    """
    synth = variables["params"]["synthesis"]
    frozen = {}
    for res in cfg.block_resolutions:
        block = synth[f"b{res}"]
        layers = {}
        for name in ("conv1", "torgb") if res == 4 else ("conv0", "conv1", "torgb"):
            up = 2 if name == "conv0" else 1
            layers[name] = {"conv": ops.freeze_conv(block[name]["weight"], up=up, dtype=dtype)}
        frozen[f"b{res}"] = layers
    return {**variables, FROZEN: {"synthesis": frozen}}


def variable_shapes(cfg: StyleGAN2Config) -> dict:
    """The variables' structure as ``jax.ShapeDtypeStruct`` leaves (no computation)."""
    z = jax.ShapeDtypeStruct((1, cfg.z_dim), jnp.float32)
    c = jax.ShapeDtypeStruct((1, cfg.c_dim), jnp.float32) if cfg.c_dim else None
    return jax.eval_shape(lambda k, z, c: Generator(cfg).init({"params": k}, z, c), jax.random.key(0), z, c)


def init_generator(cfg: StyleGAN2Config, key: jax.Array) -> dict:
    """Randomly initialised variables (``{'params', 'buffers'}``), distributed as NVIDIA initialises them.

    Same laws as the modules' own initialisers (``Generator(cfg).init``): N(0, 1) weights, constants and
    noise buffers (mapping weights N(0, 1) / lr_multiplier), affine biases 1, other biases, noise strengths
    and ``w_avg`` 0. The values come from ONE normal draw sliced over the leaves, because compiling a
    random-number kernel per leaf (what ``Generator.init`` does) takes minutes on a small CPU.
    """
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(variable_shapes(cfg))
    names = ["/".join(str(k.key) for k in path) for path, _ in paths_leaves]
    is_random = [n.rsplit("/", 1)[-1] in ("weight", "const", "noise_const") for n in names]
    sizes = [math.prod(leaf.shape) for _, leaf in paths_leaves]
    unit = np.asarray(jax.random.normal(key, (sum(s for s, r in zip(sizes, is_random) if r),), jnp.float32))
    leaves, offset = [], 0
    for name, (_, leaf), size, random in zip(names, paths_leaves, sizes, is_random):
        if random:
            scale = 1.0 / cfg.mapping_lr_multiplier if name.startswith("params/mapping/fc") else 1.0
            value = unit[offset : offset + size].reshape(leaf.shape) * scale
            offset += size
        else:
            value = np.full(leaf.shape, 1.0 if name.endswith("affine/bias") else 0.0, np.float32)
        leaves.append(jnp.asarray(value, jnp.float32))
    return jax.tree.unflatten(treedef, leaves)


def load_generator(path) -> tuple[StyleGAN2Config, dict]:
    """Loads a converted StyleGAN2 generator directory (``python -m ports.convert``) as ``(cfg, variables)``."""
    converted = load_converted(path, kind=KIND)
    cfg = config_from_dict(converted.config)
    return cfg, jax.tree.map(jnp.asarray, converted.variables)


# ---- generator glue: what inversion, editing and bundles need around the module -----------------------------


@functools.lru_cache(maxsize=None)
def synthesize_fn(cfg: StyleGAN2Config, fused_modconv: bool = False, dtype: Any = jnp.float32, remat: bool = False):
    """Synthesis as a plain function ``(variables, ws_BxLxD, noise) -> images_BxHxWxC`` with explicit noise maps
    (``noise_mode="const"``): what the inversion engine and the edit renderer call.

    ``fused_modconv``, ``dtype`` and ``remat`` are the :class:`Generator` options. Cached, so every caller with
    the same architecture and options closes over the same function (one compile).
    """
    model = Generator(cfg, dtype=dtype, fused_modconv=fused_modconv, remat=remat)

    def synthesize(variables, ws_BxLxD, noise):
        return model.apply(variables, ws_BxLxD, method="synthesis", noise_mode="const", noise=noise)

    return synthesize


def noise_buffers(cfg: StyleGAN2Config, variables: dict) -> tuple[jax.Array, ...]:
    """The generator's constant noise maps ``[H, W]`` in :func:`noise_shapes` order."""
    synth = variables["buffers"]["synthesis"]
    out = []
    for name, _ in noise_shapes(cfg):
        block, conv = name.split("/")
        out.append(synth[block][conv]["noise_const"])
    return tuple(out)


def mean_w(cfg: StyleGAN2Config, variables: dict, *, num_samples: int = 50_000, seed: int = 0,
           batch: int = 2_000) -> np.ndarray:
    """float32 ``[w_dim]``: the mean of ``mapping(z)`` (untruncated) over ``num_samples`` z ~ N(0, I) drawn from
    the typed key ``seed`` (one key per batch of ``batch``; class-conditional generators get uniform classes).

    The inversion's initial latent and the truncation centre (METHOD.md: 50,000 z, a fixed seed); a converter
    uses it for a checkpoint that stores no average. The mean's own ``w_avg`` buffer is not read.
    """
    model = Generator(cfg)
    mapping = jax.jit(lambda v, z, c: model.apply(v, z, c, method="mapping")[:, 0])
    total = np.zeros((cfg.w_dim,), np.float64)
    key = jax.random.key(seed)
    for start in range(0, num_samples, batch):
        n = min(batch, num_samples - start)
        z = jax.random.normal(jax.random.fold_in(key, start), (n, cfg.z_dim))
        c = None
        if cfg.c_dim:
            c = jax.nn.one_hot(jax.random.randint(jax.random.fold_in(key, -start - 1), (n,), 0, cfg.c_dim), cfg.c_dim)
        total += np.asarray(mapping(variables, z, c), np.float64).sum(0)
    return (total / num_samples).astype(np.float32)

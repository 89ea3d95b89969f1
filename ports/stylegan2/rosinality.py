"""rosinality/stylegan2-pytorch checkpoints (``g_ema`` by default, or ``g``); discriminators are not converted.

The architecture is inferred from tensor shapes (the mapping lr multiplier, which shapes cannot tell, is
assumed to be 0.01 and recorded so). ``latent_avg`` becomes ``w_avg``; a checkpoint without it gets ``w_avg``
estimated from the mapping network (``magec_jax.models.stylegan2.mean_w``, as rosinality's ``mean_latent``
estimates it), and the manifest says so.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from magec_jax.errors import FileFormatError
from magec_jax.models import stylegan2 as sg2
from magec_jax.weights import Converted, unflatten
from ports.stylegan2 import common
from ports.tables import Rule, apply_table, linear_to_dense, scalar
from ports.torch_files import load_torch

W_AVG_SAMPLES = 4096


def _modulated_weight(a_1xOxIxKxK: np.ndarray) -> np.ndarray:
    """A modulated convolution's weight ``[1, O, I, K, K]`` -> ``[K, K, I, O]``."""
    return a_1xOxIxKxK[0].transpose(2, 3, 1, 0)


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1)


def rules(cfg: sg2.StyleGAN2Config) -> tuple[Rule, ...]:
    """rosinality state-dict names (+ the top-level ``latent_avg``) -> leaves of the generator ``cfg``.

    ``convs.{2j}`` / ``convs.{2j+1}`` are conv0 / conv1 of resolution 2**(j+3), ``to_rgbs.{j}`` its torgb;
    ``noises.noise_{i}`` follow :func:`magec_jax.models.stylegan2.noise_shapes` order; ``style.0`` is the
    parameter-free PixelNorm, so ``style.{k}`` is the port's ``fc{k-1}``.
    """
    layers = [name for name, _ in sg2.noise_shapes(cfg)]

    def conv(leaf: str) -> Callable[[re.Match], str]:
        return lambda m: f"params/synthesis/b{2 ** (int(m[1]) // 2 + 3)}/conv{int(m[1]) % 2}/{leaf}"

    def rgb(leaf: str) -> Callable[[re.Match], str]:
        return lambda m: f"params/synthesis/b{2 ** (int(m[1]) + 3)}/torgb/{leaf}"

    def style(leaf: str) -> Callable[[re.Match], str]:
        return lambda m: f"params/mapping/fc{int(m[1]) - 1}/{leaf}"

    def noise(m: re.Match) -> str:
        i = int(m[1])
        return f"buffers/synthesis/{layers[i]}/noise_const" if i < len(layers) else f"(noise {i} of {len(layers)})"

    b4 = "params/synthesis/b4"
    return (
        Rule(r"latent_avg", "buffers/mapping/w_avg", _flat),
        Rule(r"style\.(\d+)\.weight", style("weight"), linear_to_dense),
        Rule(r"style\.(\d+)\.bias", style("bias")),
        Rule(r"input\.input", f"{b4}/const", lambda a: a[0].transpose(1, 2, 0)),
        Rule(r"conv1\.conv\.weight", f"{b4}/conv1/weight", _modulated_weight),
        Rule(r"conv1\.conv\.modulation\.weight", f"{b4}/conv1/affine/weight", linear_to_dense),
        Rule(r"conv1\.conv\.modulation\.bias", f"{b4}/conv1/affine/bias"),
        Rule(r"conv1\.noise\.weight", f"{b4}/conv1/noise_strength", scalar),
        Rule(r"conv1\.activate\.bias", f"{b4}/conv1/bias"),
        Rule(r"convs\.(\d+)\.conv\.weight", conv("weight"), _modulated_weight),
        Rule(r"convs\.(\d+)\.conv\.modulation\.weight", conv("affine/weight"), linear_to_dense),
        Rule(r"convs\.(\d+)\.conv\.modulation\.bias", conv("affine/bias")),
        Rule(r"convs\.(\d+)\.noise\.weight", conv("noise_strength"), scalar),
        Rule(r"convs\.(\d+)\.activate\.bias", conv("bias")),
        Rule(r"convs\.(\d+)\.conv\.blur\.kernel", None, common.standard_filter(4.0)),
        Rule(r"to_rgb1\.conv\.weight", f"{b4}/torgb/weight", _modulated_weight),
        Rule(r"to_rgb1\.conv\.modulation\.weight", f"{b4}/torgb/affine/weight", linear_to_dense),
        Rule(r"to_rgb1\.conv\.modulation\.bias", f"{b4}/torgb/affine/bias"),
        Rule(r"to_rgb1\.bias", f"{b4}/torgb/bias", _flat),
        Rule(r"to_rgbs\.(\d+)\.conv\.weight", rgb("weight"), _modulated_weight),
        Rule(r"to_rgbs\.(\d+)\.conv\.modulation\.weight", rgb("affine/weight"), linear_to_dense),
        Rule(r"to_rgbs\.(\d+)\.conv\.modulation\.bias", rgb("affine/bias")),
        Rule(r"to_rgbs\.(\d+)\.bias", rgb("bias"), _flat),
        Rule(r"to_rgbs\.(\d+)\.upsample\.kernel", None, common.standard_filter(4.0)),
        Rule(r"noises\.noise_(\d+)", noise, lambda a: a[0, 0]),
    )


def _config(sd: Mapping[str, np.ndarray], path: Path) -> sg2.StyleGAN2Config:
    """The architecture a ``g_ema`` state dict's tensor shapes imply."""
    styles = sorted(int(m[1]) for k in sd if (m := re.fullmatch(r"style\.(\d+)\.weight", k)))
    convs = sorted(int(m[1]) for k in sd if (m := re.fullmatch(r"convs\.(\d+)\.conv\.weight", k)))
    if not styles or "conv1.conv.weight" not in sd or "to_rgb1.conv.weight" not in sd:
        raise FileFormatError(path, "g_ema lacks style.*/conv1/to_rgb1 weights: not a rosinality generator")
    if len(convs) % 2:
        raise FileFormatError(path, f"odd number of convs ({len(convs)}): incomplete rosinality generator")
    channels = {4: sd["conv1.conv.weight"].shape[1]}
    channels.update({2 ** (k // 2 + 3): sd[f"convs.{k}.conv.weight"].shape[1] for k in convs if k % 2})
    channel_base, channel_max = common.channel_schedule(channels, path)
    return common.generator_config(
        path,
        z_dim=sd["style.1.weight"].shape[1],
        w_dim=sd[f"style.{max(styles)}.weight"].shape[0],
        img_resolution=4 * 2 ** (len(convs) // 2),
        img_channels=sd["to_rgb1.conv.weight"].shape[1],
        mapping_layers=len(styles),
        layer_features=sd["style.1.weight"].shape[0] if len(styles) > 1 else None,
        channel_base=channel_base,
        channel_max=channel_max,
    )


def convert_rosinality(path: str | os.PathLike, *, network: str | None = None) -> Converted:
    """Converts a rosinality/stylegan2-pytorch checkpoint (``g_ema`` by default, or ``network='g'``)."""
    path = Path(path)
    ckpt = load_torch(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("g_ema", ckpt.get("g")), dict):
        found = sorted(map(str, ckpt))[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise FileFormatError(path, f"not a rosinality checkpoint (no 'g_ema' state dict; found {found})")
    nets = {k: v for k, v in ckpt.items() if k in ("g_ema", "g", "d")}
    name, sd = common.pick(nets, network, "g_ema", {"g_ema": "g_ema", "g": "g", "gs": "g_ema"}, path)
    if name == "d":
        raise FileFormatError(path, "rosinality discriminators are not converted (generators only)")
    cfg = _config(sd, path)
    source = dict(sd)
    has_avg = ckpt.get("latent_avg") is not None
    if has_avg:
        source["latent_avg"] = ckpt["latent_avg"]
    flat = apply_table(
        rules(cfg), [(path, source)], common.generator_leaves(cfg), what="a rosinality generator",
        fill_later=() if has_avg else ("buffers/mapping/w_avg",),
    )
    extra: dict[str, Any] = {"network": name, "assumed": {"mapping_lr_multiplier": 0.01}}
    if not has_avg:
        variables = unflatten({**flat, "buffers/mapping/w_avg": np.zeros(cfg.w_dim, np.float32)})
        flat["buffers/mapping/w_avg"] = sg2.mean_w(cfg, variables, num_samples=W_AVG_SAMPLES, seed=0)
        extra["w_avg"] = f"estimated: mean mapping(z) of {W_AVG_SAMPLES} z (magec_jax.models.stylegan2.mean_w, seed 0)"
    return common.converted(cfg, flat, **extra)

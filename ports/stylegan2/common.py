"""What the StyleGAN2 converters share: target leaves, the standard resample filter, settings checks, the output."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from magec_jax.errors import FileFormatError
from magec_jax.models import discriminator as disc
from magec_jax.models import stylegan2 as sg2
from magec_jax.weights import Converted, unflatten
from ports.tables import Transform, constant, flat_leaves, module_leaves

CONVERTER = "ports.stylegan2/1"
FIR = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 64  # NVIDIA's resample_filter


def standard_filter(gain: float = 1.0) -> Transform:
    """A rule transform for resample-filter buffers: not copied (the model's FIR is fixed), but verified."""
    return constant(gain * FIR, f"the standard resample filter outer([1, 3, 3, 1]) / {64 / gain:g}", atol=1e-7)


def generator_leaves(cfg: sg2.StyleGAN2Config) -> dict[str, jax.ShapeDtypeStruct]:
    """Every variable leaf of the generator ``cfg`` describes."""
    return flat_leaves(sg2.variable_shapes(cfg))


def discriminator_leaves(cfg: disc.DiscriminatorConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """Every variable leaf of the discriminator ``cfg`` describes."""
    images = jax.ShapeDtypeStruct((4, cfg.img_resolution, cfg.img_resolution, cfg.img_channels), jnp.float32)
    return module_leaves(disc.Discriminator(cfg), images)


def converted(cfg: Any, flat: Mapping[str, np.ndarray], *, kind: str = sg2.KIND, **extra: Any) -> Converted:
    """The converted network; ``extra`` (e.g. the pickled kwargs) goes into the manifest as JSON values."""
    jsonable = json.loads(json.dumps(extra, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    return Converted(
        kind=kind, config=cfg.to_dict(), variables=unflatten(flat),
        manifest={"converter": CONVERTER, "extra": jsonable},
    )


def pick(networks: Mapping[str, Any], network: str | None, default: str, aliases: Mapping[str, str], path: Path):
    """``(name, value)`` of the network named ``network`` (case-insensitive, with aliases), or of ``default``."""
    name = default if network is None else aliases.get(network.lower(), network)
    if name not in networks:
        raise FileFormatError(path, f"no network {network!r} (has {sorted(map(str, networks))})")
    return name, networks[name]


def channel_schedule(channels: Mapping[int, int], path: Path) -> tuple[int, int]:
    """``(channel_base, channel_max)`` reproducing ``{resolution: channels}``, or an error."""
    channel_max = max(channels.values())
    below = [r for r, c in channels.items() if c < channel_max]
    channel_base = channels[max(below)] * max(below) if below else channel_max * max(channels)
    if any(min(channel_base // r, channel_max) != c for r, c in channels.items()):
        raise FileFormatError(
            path,
            f"channels per resolution {dict(sorted(channels.items()))} follow no "
            "min(channel_base // R, channel_max) schedule",
        )
    return channel_base, channel_max


def opt_float(value: Any) -> float | None:
    """``None`` stays None; anything else becomes a float."""
    return None if value is None else float(value)


def check_defaults(kwargs: Mapping[str, Any], defaults: Mapping[str, Any], what: str, path: Path) -> None:
    """Settings the port does not implement must have their standard value."""
    for key, standard in defaults.items():
        if key in kwargs and kwargs[key] is not None and kwargs[key] != standard:
            raise FileFormatError(path, f"{what} {key}={kwargs[key]!r} is not supported (only {standard!r})")


def check_known(kwargs: Mapping[str, Any], known: set[str], what: str, path: Path, hint: str = "") -> None:
    """Every keyword of a pickled network must be one the port understands."""
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise FileFormatError(path, f"unknown {what} {unknown}{hint}")


def discriminator_config(path: Path, **kwargs: Any) -> disc.DiscriminatorConfig:
    """A discriminator config, its validation errors reported against ``path``."""
    try:
        return disc.DiscriminatorConfig(**kwargs)
    except ValueError as e:
        raise FileFormatError(path, str(e)) from None


def generator_config(path: Path, **kwargs: Any) -> sg2.StyleGAN2Config:
    """A generator config, its validation errors reported against ``path``."""
    try:
        return sg2.StyleGAN2Config(**kwargs)
    except ValueError as e:
        raise FileFormatError(path, str(e)) from None

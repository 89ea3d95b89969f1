"""LinkNet: the linear map from a W+ latent to the descriptor F's K logits (MAGEC, section 3).

One dense layer on the flattened latent: ``logits_K = flatten(w_LxD) @ kernel_(LD)xK + bias_K``. It is
trained on generated pairs (see ``magec_jax.linknet``) and frozen during inversion.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LinkNetConfig:
    """Shape of a LinkNet: latents ``[num_ws, w_dim]`` to ``num_outputs`` logits."""

    num_ws: int
    w_dim: int
    num_outputs: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LinkNetConfig":
        return cls(num_ws=int(d["num_ws"]), w_dim=int(d["w_dim"]), num_outputs=int(d["num_outputs"]))


class LinkNet(nn.Module):
    """``[..., num_ws, w_dim] -> [..., num_outputs]`` logits; any leading batch axes."""

    config: LinkNetConfig
    dtype: jnp.dtype | None = None  # None: compute in the inputs' dtype

    @nn.compact
    def __call__(self, w_xLxD: jax.Array) -> jax.Array:
        cfg = self.config
        if w_xLxD.shape[-2:] != (cfg.num_ws, cfg.w_dim):
            raise ValueError(f"LinkNet expects [..., {cfg.num_ws}, {cfg.w_dim}] latents, got {w_xLxD.shape}")
        flat = w_xLxD.reshape(*w_xLxD.shape[:-2], cfg.num_ws * cfg.w_dim)
        return nn.Dense(cfg.num_outputs, dtype=self.dtype, name="fc")(flat)


def linknet_apply(variables, w_xLxD: jax.Array) -> jax.Array:
    """Pure apply with the config read off the kernel shape: ``[..., L, D] -> [..., K]``."""
    kernel = variables["params"]["fc"]["kernel"]
    num_ws, w_dim = w_xLxD.shape[-2:]
    cfg = LinkNetConfig(num_ws=num_ws, w_dim=w_dim, num_outputs=kernel.shape[-1])
    return LinkNet(cfg).apply(variables, w_xLxD)

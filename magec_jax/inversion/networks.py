"""The frozen networks an inversion reads, as one typed record (:class:`Networks`).

Callables are static (the engine closes over them); array fields are the traced weights. ``magec_jax.bundle``
builds them from a bundle directory; tests and notebooks may build them by hand.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from magec_jax.errors import MagecError
from magec_jax.inversion.settings import NetworkCompute
from magec_jax.models.interfaces import Descriptor, IdentityEmbedder

# (generator variables, ws_BxLxD, noise maps (tuple of [B, h, w]) or None) -> images_BxHxWxC
SynthesizeFn = Callable[[Any, jax.Array, Any], jax.Array]
# (variables, x_BxHxWxC, y_BxHxWxC) -> distances_B
DistanceFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Networks:
    """The frozen networks of an inversion. Callables are static; array fields are traced pytrees.

    Attributes:
      synthesize: the generator's synthesis, ``(variables, ws_BxLxD, noise) -> images_BxHxWxC``.
      generator: its variables.
      num_ws, w_dim: latent shape.
      resolution: side of the generated (square) images.
      w_avg: ``[w_dim]`` initial latent (mean of mapped z).
      noise_init: the generator's constant noise maps (tuple of ``[h, w]``), start of the noise stage.
      lpips: perceptual distance ``(variables, x, y) -> [B]`` (resizes internally).
      lpips_variables: its weights.
      lpips_target, lpips_to_target: optional split of ``lpips`` into ``(variables, y) -> features`` and
        ``(variables, x, features) -> [B]``; when given, the targets' features are computed once per batch
        instead of at every step (the target half of LPIPS is constant).
      identity, descriptor: optional ID network and attribute descriptor F.
      linknet: LinkNet variables (needed when the MAGEC term is used).
      directions: ``[K, w_dim]`` or ``[K, num_ws, w_dim]`` unit boundaries in F's output order.
      compute: what the callables compute with.
      compute_variant: builds these networks for another :class:`NetworkCompute` (same weights); None when
        the callables are fixed (they then serve only ``compute``).
    """

    synthesize: SynthesizeFn
    generator: Any
    num_ws: int
    w_dim: int
    resolution: int
    w_avg: Any
    lpips: DistanceFn
    lpips_variables: Any
    noise_init: tuple = ()
    lpips_target: Callable[[Any, jax.Array], Any] | None = None
    lpips_to_target: Callable[[Any, jax.Array, Any], jax.Array] | None = None
    identity: IdentityEmbedder | None = None
    descriptor: Descriptor | None = None
    linknet: Any = None
    directions: Any = None
    compute: NetworkCompute = NetworkCompute()
    compute_variant: Callable[[NetworkCompute], Networks] | None = None

    def for_compute(self, compute: NetworkCompute) -> Networks:
        """These networks computing as ``compute`` asks (themselves when they already do)."""
        if compute == self.compute:
            return self
        if self.compute_variant is None:
            raise MagecError(f"these networks compute with {self.compute} and cannot run with {compute}")
        return self.compute_variant(compute)

    def arrays(self) -> dict:
        """The traced part: every weight the step reads."""
        return dict(
            generator=self.generator,
            w_avg=self.w_avg,
            noise_init=self.noise_init,
            lpips=self.lpips_variables,
            identity=None if self.identity is None else self.identity.variables,
            descriptor=None if self.descriptor is None else self.descriptor.variables,
            linknet=self.linknet,
            directions=self.directions,
        )

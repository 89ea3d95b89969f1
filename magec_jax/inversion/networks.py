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
from magec_jax.models.cnf import ODESolver
from magec_jax.models.interfaces import Descriptor, IdentityEmbedder
from magec_jax.models.styleflow import StyleFlowConfig

# (generator variables, ws_BxLxD, noise maps (tuple of [B, h, w]) or None) -> images_BxHxWxC
SynthesizeFn = Callable[[Any, jax.Array, Any], jax.Array]
# (variables, x_BxHxWxC, y_BxHxWxC) -> distances_B
DistanceFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class FlowSupervision:
    """A StyleFlow prior trained on the outputs of the descriptor F, as the ``magec_styleflow`` term uses it.

    Attributes:
      config: the prior's architecture (static).
      variables: its weights (traced).
      mean_M, std_M: the context's standardisation (the prior sees ``(c - mean) / std``).
      layers_KxL: bools, the W+ rows an edit of attribute k takes from the reverse solve (F's output order).
      signs_K: +1 where raising context value k raises F's logit k, -1 where it lowers it.
      context_apply: ``(variables, images_BxHxWxC) -> contexts_BxM``, F's threshold-free outputs (the values the
        prior was trained on), with ``context_variables``.
      solver: how the term integrates (static).
    """

    config: StyleFlowConfig
    variables: Any
    mean_M: Any
    std_M: Any
    layers_KxL: Any
    signs_K: Any
    context_apply: Callable[[Any, jax.Array], jax.Array]
    context_variables: Any
    solver: ODESolver = ODESolver()

    def arrays(self) -> dict:
        """The traced part."""
        return dict(prior=self.variables, mean=self.mean_M, std=self.std_M, layers=self.layers_KxL, signs=self.signs_K,
                    context=self.context_variables)


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
      styleflow: a StyleFlow prior trained on F's outputs (the ``magec_styleflow`` term), or None.
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
    styleflow: FlowSupervision | None = None
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
            styleflow=None if self.styleflow is None else self.styleflow.arrays(),
        )

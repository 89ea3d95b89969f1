"""The two network roles the inversion engine uses, whatever network fills them.

Both take images as the generator makes them: ``images_BxHxWxC`` float, RGB, NHWC, nominally in [-1, 1], at
the generator's resolution. Each network resizes, crops and normalises as its own recipe says, inside its
``apply``, so that everything stays one differentiable, jit- and vmap-friendly function of
``(variables, images)``.

The engine closes over ``apply`` (static) and passes ``variables`` (a pytree of arrays) as a traced
argument, so swapping weights never recompiles.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal

import jax
import numpy as np

LossKind = Literal["bce", "softmax_ce"]
ApplyFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """The attribute descriptor F of MAGEC: images -> K logits.

    Attributes:
      name: what it is, e.g. ``"resnet50-celeba40"`` or ``"faceres+emotion"``.
      attribute_names: the K output names, in output order.
      loss: the loss F was trained with: ``"bce"`` (K independent sigmoid attributes) or ``"softmax_ce"``
        (one K-way class). MAGEC's L_F uses the same loss.
      apply: ``(variables, images_BxHxWxC) -> logits_BxK``.
      variables: the network's weights.
    """

    name: str
    attribute_names: tuple[str, ...]
    loss: LossKind
    apply: ApplyFn
    variables: Any

    def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
        return self.apply(self.variables, images_BxHxWxC)

    @property
    def num_outputs(self) -> int:
        return len(self.attribute_names)


@dataclasses.dataclass(frozen=True)
class IdentityEmbedder:
    """The identity network of the ID loss: images -> unit-norm embeddings ``[B, E]``.

    Attributes:
      name: e.g. ``"irse50"`` or ``"faceres"``.
      apply: ``(variables, images_BxHxWxC) -> embeddings_BxE`` with unit L2 norm per row.
      variables: the network's weights.
    """

    name: str
    apply: ApplyFn
    variables: Any

    def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
        return self.apply(self.variables, images_BxHxWxC)


@dataclasses.dataclass(frozen=True)
class LabelSource:
    """What the cache stores about each rendered sample, and how it becomes F's logits.

    Attributes:
      name: F's name, for messages.
      apply: ``(variables, images_BxHxWxC) -> outputs_BxM``, the stored outputs.
      variables: its weights.
      spec: JSON-able description of ``apply`` (which network, crop, ...), part of the cache fingerprint.
      to_logits: ``outputs_NxM -> logits_NxK`` on the host, e.g. the descriptor's thresholds.
    """

    name: str
    apply: Callable[[Any, jax.Array], jax.Array]
    variables: Any
    spec: dict
    to_logits: Callable[[np.ndarray], np.ndarray]

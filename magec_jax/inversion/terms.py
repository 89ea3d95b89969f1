"""Loss terms: named, pure, per-image functions in a registry; a phase weights them by name.

A term is registered as a *factory*, ``factory(nets, settings) -> LossTerm | None``, called once when an engine
is built: it picks the networks it needs from :class:`~magec_jax.inversion.networks.Networks` and returns the
bound term, or None when those networks are missing (the term is then unavailable, and weighting it is an
error). The four terms of the paper are registered exactly as a user's would be::

    from magec_jax.inversion.terms import LossTerm, register_term

    def w_prior(nets, settings):  # pull the latent towards w_avg
        return LossTerm(lambda v, x: jnp.mean(jnp.square(x.ws - v)), variables=nets.w_avg)

    register_term("w_prior", w_prior)
    settings = InversionSettings(phases=(Phase(200, mse=1.0, lpips=1.0, w_prior=1e-3),))

A bound term's ``loss(variables, inputs)`` sees ONE image (no batch axis; the engine vmaps it) and returns a
scalar; ``variables`` (its weights) are traced, so they never become compile-time constants, and ``prepare``
computes per-image constants of the targets once per batch (e.g. the ID embedding of the target).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from magec_jax.errors import ConfigError
from magec_jax.inversion.magec_loss import EditMode, LinkNetApply, binarize, descriptor_loss, magec_loss
from magec_jax.inversion.networks import FlowSupervision, Networks
from magec_jax.inversion.settings import InversionSettings
from magec_jax.models import styleflow as sf
from magec_jax.models.cnf import ODESolver
from magec_jax.models.interfaces import LossKind
from magec_jax.models.linknet import linknet_apply


class TermInputs(NamedTuple):
    """What a term sees of one image at one step (no batch axis).

    Attributes:
      image: the rendered G(w) ``[H, W, C]`` in [-1, 1].
      ws: the latent as fed to G, ``[num_ws, w_dim]``.
      target: the target image ``[H, W, C]``.
      prepared: this image's constants from the term's ``prepare`` (None without one).
    """

    image: jax.Array
    ws: jax.Array
    target: jax.Array
    prepared: Any


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """A loss term bound to the networks of one engine.

    Attributes:
      loss: ``(variables, inputs: TermInputs) -> scalar`` for one image; differentiable in ``inputs.ws`` (and
        ``inputs.image``, through which the gradient reaches the latent).
      variables: the term's frozen weights (a pytree of arrays, traced and replicated), or None.
      prepare: ``(variables, targets_BxHxWxC) -> pytree`` of per-image constants (batch axis first),
        computed once per batch; None when the term needs none.
      renders: False when the loss reads only the latent (``inputs.ws``): such a term alone never renders.
    """

    loss: Callable[[Any, TermInputs], jax.Array]
    variables: Any = None
    prepare: Callable[[Any, jax.Array], Any] | None = None
    renders: bool = True


TermFactory = Callable[[Networks, InversionSettings], "LossTerm | None"]

_REGISTRY: dict[str, TermFactory] = {}


def register_term(name: str, factory: TermFactory | LossTerm, *, replace: bool = False) -> None:
    """Registers a loss term under ``name``, so that phases can weight it.

    Args:
      name: the name phases, results and reports use.
      factory: ``(nets, settings) -> LossTerm | None`` (None: unavailable with these networks), or a
        :class:`LossTerm` that needs no networks.
      replace: allow replacing a registered term (otherwise registering a taken name is an error).
    """
    if not name.isidentifier():
        raise ValueError(f"a term name must be an identifier, got {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"a loss term named {name!r} is registered already (pass replace=True to replace it)")
    _REGISTRY[name] = (lambda nets, settings: factory) if isinstance(factory, LossTerm) else factory


def unregister_term(name: str) -> None:
    """Removes a registered term (for tests and notebooks that register temporary ones)."""
    _REGISTRY.pop(name, None)


def registered_terms() -> tuple[str, ...]:
    """The registered term names, built-ins first, then in registration order."""
    return tuple(_REGISTRY)


def bind_terms(nets: Networks, settings: InversionSettings) -> dict[str, LossTerm]:
    """Every registered term that can be computed with ``nets``, bound, in registry order.

    Raises:
      ConfigError: a phase weights a term that is not registered or cannot be computed with ``nets``.
    """
    bound = {}
    for name, factory in _REGISTRY.items():
        term = factory(nets, settings)
        if term is not None:
            bound[name] = term
    for name in settings.weighted_terms:
        if name not in _REGISTRY:
            raise ConfigError(f"the settings weight an unknown loss term {name!r} "
                              f"(registered: {', '.join(_REGISTRY)})")
        if name not in bound:
            raise ConfigError(f"the settings weight the loss term {name!r}, which the networks given cannot compute")
    return bound


# ---- the paper's four terms ----------------------------------------------------------------------------


def _mse(nets: Networks, settings: InversionSettings) -> LossTerm:
    """Mean squared error between G(w) and the target, images in [-1, 1]."""
    return LossTerm(lambda variables, x: jnp.mean(jnp.square(x.image - x.target)))


def _lpips(nets: Networks, settings: InversionSettings) -> LossTerm:
    """LPIPS-VGG16 between G(w) and the target; the target's features are prepared once per batch when the
    networks split LPIPS in a target half and a comparison."""
    if nets.lpips_target is not None and nets.lpips_to_target is not None:
        def loss(variables, x: TermInputs) -> jax.Array:
            features = jax.tree.map(lambda f: f[None], x.prepared)
            return nets.lpips_to_target(variables, x.image[None], features)[0]

        return LossTerm(loss, variables=nets.lpips_variables, prepare=nets.lpips_target)
    return LossTerm(lambda variables, x: nets.lpips(variables, x.image[None], x.target[None])[0],
                    variables=nets.lpips_variables)


def _identity(nets: Networks, settings: InversionSettings) -> LossTerm | None:
    """1 - cos between the identity embeddings of G(w) and of the target."""
    if nets.identity is None:
        return None
    apply = nets.identity.apply
    return LossTerm(
        lambda variables, x: 1.0 - jnp.dot(apply(variables, x.image[None])[0], x.prepared),
        variables=nets.identity.variables,
        prepare=apply,
    )


def magec_term(
    *,
    latent_classifier: Any,
    directions: Any,
    descriptor_apply: Callable[[Any, jax.Array], jax.Array],
    descriptor_variables: Any,
    loss_kind: LossKind,
    alpha: float,
    mode: EditMode = "flip",
    apply_fn: LinkNetApply = linknet_apply,
) -> LossTerm:
    """The MAGEC loss (``magec_loss``) as a term: a latent classifier agreeing with the descriptor F's
    binarised prediction on the target, on ``w`` and on every edit of ``w``, all in one batched product.

    Args:
      latent_classifier: the classifier's variables (LinkNet's by default).
      directions: unit edit directions ``[K, w_dim]`` or ``[K, num_ws, w_dim]``, one per output of F.
      descriptor_apply, descriptor_variables: F, ``(variables, images_BxHxWxC) -> logits_BxK``.
      loss_kind: F's loss, ``"bce"`` or ``"softmax_ce"``.
      alpha, mode: edit strength and edit set (``magec_loss``).
      apply_fn: ``(variables, w_xLxD) -> logits_xK``, the latent classifier (LinkNet by default).
    """

    def prepare(variables, targets_BxHxWxC):
        return binarize(descriptor_apply(variables["descriptor"], targets_BxHxWxC), loss_kind)

    def loss(variables, x: TermInputs) -> jax.Array:
        return magec_loss(x.ws, variables["classifier"], x.prepared, variables["directions"], alpha=alpha,
                          mode=mode, loss_kind=loss_kind, apply_fn=apply_fn)

    variables = dict(classifier=latent_classifier, directions=directions, descriptor=descriptor_variables)
    return LossTerm(loss, variables=variables, prepare=prepare, renders=False)


def _magec(nets: Networks, settings: InversionSettings) -> LossTerm | None:
    """MAGEC with the bundle's LinkNet, boundaries and descriptor, at the settings' alpha and edit mode."""
    if None in (nets.descriptor, nets.linknet, nets.directions):
        return None
    return magec_term(
        latent_classifier=nets.linknet,
        directions=nets.directions,
        descriptor_apply=nets.descriptor.apply,
        descriptor_variables=nets.descriptor.variables,
        loss_kind=nets.descriptor.loss,
        alpha=settings.magec_alpha,
        mode=settings.magec_mode,
    )


def styleflow_edits(flow: FlowSupervision, variables: Any, w_LxD: jax.Array, context_M: jax.Array,
                    targets_K: jax.Array, *, alpha: float, loss_kind: LossKind) -> tuple[jax.Array, jax.Array]:
    """StyleFlow's edit of every attribute of one latent, as one solve: ``(edited_KxLxD, edit_targets_KxK)``.

    One forward solve ``z = flow(w | c)``; then one reverse solve of K copies of ``z``, copy k with context
    value k moved by ``alpha`` standard deviations towards the other side of F's decision (up where F says the
    attribute is absent, for a bce F; towards class k for a softmax F), and StyleFlow's layer rule per
    attribute. ``edit_targets[k]`` is the binarised F(x) with attribute k flipped (bce) or class k (softmax).
    """
    cfg = flow.config
    ctx_M = (context_M - variables["mean"]) / variables["std"]
    prior = variables["prior"]
    run = functools.partial(sf.flow, prior, config=cfg, divergence="none", solver=flow.solver)
    z_1xLxD = run(w_LxD[None], ctx_M[None]).x_BxLxD
    num_k = targets_K.shape[0]
    eye_KxK = jnp.eye(num_k, dtype=bool)
    towards = jnp.ones_like(targets_K) if loss_kind == "softmax_ce" else 1.0 - 2.0 * targets_K
    moved_KxM = ctx_M[None] + jnp.where(eye_KxK, alpha * towards * variables["signs"], 0.0)
    w_rev_KxLxD = run(jnp.broadcast_to(z_1xLxD, (num_k,) + w_LxD.shape), moved_KxM, reverse=True).x_BxLxD
    edited_KxLxD = jnp.where(variables["layers"][..., None], w_rev_KxLxD, w_LxD[None])
    if loss_kind == "softmax_ce":
        return edited_KxLxD, eye_KxK.astype(jnp.float32)
    return edited_KxLxD, jnp.where(eye_KxK, 1.0 - targets_K[None, :], targets_K[None, :])


def _magec_styleflow(nets: Networks, settings: InversionSettings) -> LossTerm | None:
    """MAGEC supervised by StyleFlow: LinkNet must agree with F on ``w`` and on StyleFlow's edit of every
    attribute of ``w`` (:func:`styleflow_edits`); the bundle's prior must have been trained on F's outputs.

    Bound only when a phase weights it: its two solves per latent (and F's second pass over the targets for the
    context) would otherwise be paid by every inversion with such a bundle just to report it."""
    if None in (nets.descriptor, nets.linknet, nets.styleflow) or not settings.uses("magec_styleflow"):
        return None
    flow = dataclasses.replace(nets.styleflow, solver=ODESolver("rk4", num_steps=settings.styleflow_steps))
    descriptor, loss_kind = nets.descriptor, nets.descriptor.loss

    def prepare(variables, targets_BxHxWxC):
        logits = descriptor.apply(variables["descriptor"], targets_BxHxWxC)
        return binarize(logits, loss_kind), flow.context_apply(variables["flow"]["context"], targets_BxHxWxC)

    def loss(variables, x: TermInputs) -> jax.Array:
        targets_K, context_M = x.prepared
        edited, edit_targets = styleflow_edits(flow, variables["flow"], x.ws, context_M, targets_K,
                                               alpha=settings.styleflow_alpha, loss_kind=loss_kind)
        latents = jnp.concatenate([x.ws[None], edited])
        losses = descriptor_loss(linknet_apply(variables["linknet"], latents),
                                 jnp.concatenate([targets_K[None], edit_targets]), loss_kind)
        return losses[0] + losses[1:].mean()

    variables = dict(linknet=nets.linknet, descriptor=descriptor.variables, flow=flow.arrays())
    return LossTerm(loss, variables=variables, prepare=prepare, renders=False)


register_term("mse", _mse)
register_term("lpips", _lpips)
register_term("id", _identity)
register_term("magec", _magec)
register_term("magec_styleflow", _magec_styleflow)
BUILTIN_TERMS = ("mse", "lpips", "id", "magec", "magec_styleflow")

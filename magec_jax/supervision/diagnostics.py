"""Why the MAGEC term helps or does not: is LinkNet consistent with the boundaries, and can the term steer?

    python -m magec_jax.diagnose --bundle demo/bundle --latents out/eval_demo/magec/inversions

The MAGEC loss asks LinkNet to read F's labels off the latent, and to read the flipped label off the latent
moved by ``alpha`` along the attribute's boundary. It can only shape the latent when
  1. LinkNet has learnt something (its labels were not all one class: ``positive_rate``),
  2. LinkNet agrees with the boundaries (``sensitivity``: the change of each LinkNet logit per unit edit
     along each boundary; the diagonal should be clearly positive, and ``flip_rate``: how often the MAGEC edit
     of strength ``alpha`` flips LinkNet's own label as the loss asks),
  3. ``alpha`` is a sensible move in this generator's W (``alpha_in_std``: alpha over the standard deviation
     of mapped w along the boundary; InterFaceGAN edits are a few standard deviations), and
  4. its gradient is not negligible next to the reconstruction terms' (:func:`loss_balance`, at finished
     inversions, weighted by the protocol's last phase).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from magec_jax.bundle import Bundle
from magec_jax.errors import MagecError
from magec_jax.inversion.engine import Engine, Phase
from magec_jax.inversion.magec_loss import as_layered, binarize, edit_set
from magec_jax.models.linknet import linknet_apply
from magec_jax.supervision.samples import mapped_ws


def linknet_consistency(bundle: Bundle, *, alpha: float, num_samples: int = 4000, seed: int = 0,
                        truncation_psi: float = 1.0, batch_size: int = 1000) -> dict[str, Any]:
    """LinkNet against the boundaries on mapped w samples (broadcast to every layer, as the boundaries are).

    Returns a dict: ``attributes`` (F's names, the order of every row and column), ``alpha``, ``num_samples``,
    and per attribute ``w_std_along_boundary``, ``alpha_in_std``, ``positive_rate`` (LinkNet's label on the
    samples), ``flip_rate`` (the MAGEC ``flip`` edit of attribute k moves LinkNet's label k to the flipped
    target), ``sensitivity`` (row k: the change of every LinkNet logit per unit edit along boundary k).
    """
    descriptor, linknet = bundle.descriptor(), bundle.linknet()
    if descriptor is None or linknet is None or not bundle.directions():
        raise MagecError(f"{bundle.path}: the diagnosis needs a descriptor, a LinkNet and boundaries")
    if descriptor.loss != "bce":
        raise MagecError(f"{bundle.path}: the diagnosis covers binary (bce) descriptors only")
    cfg, gen_variables = bundle.generator
    nets = bundle.networks()
    w_avg = bundle.w_avg()
    w_ND = mapped_ws(cfg, gen_variables, jax.random.key(seed), num_samples=num_samples, batch_size=batch_size,
                     w_avg_D=w_avg, truncation_psi=truncation_psi)
    directions_KxLxD = as_layered(jnp.asarray(nets.directions), cfg.num_ws)
    names = descriptor.attribute_names
    proj_NxK = (w_ND - w_avg) @ np.asarray(nets.directions, np.float64).T
    w_std_K = proj_NxK.std(axis=0)

    def apply(w_xLxD):
        return linknet_apply(linknet, w_xLxD)

    zero = apply(jnp.zeros((1, cfg.num_ws, cfg.w_dim), jnp.float32))[0]
    sensitivity_KxK = np.asarray(apply(directions_KxLxD) - zero[None])

    @jax.jit
    def labels_and_flips(w_BxD):
        w_BxLxD = jnp.broadcast_to(w_BxD[:, None], (w_BxD.shape[0], cfg.num_ws, cfg.w_dim))
        labels_BxK = binarize(apply(w_BxLxD), "bce")

        def flips(w_LxD, labels_K):
            offsets_KxLxD, targets_KxK = edit_set(labels_K, directions_KxLxD, alpha=alpha, mode="flip")
            edited_KxK = binarize(apply(w_LxD[None] + offsets_KxLxD), "bce")
            return jnp.diagonal(edited_KxK == targets_KxK)

        return labels_BxK, jax.vmap(flips)(w_BxLxD, labels_BxK)

    labels, flipped = zip(*(labels_and_flips(jnp.asarray(w_ND[i: i + batch_size]))
                            for i in range(0, num_samples, batch_size)))
    positive_K = np.concatenate(labels).mean(axis=0)
    flip_K = np.concatenate(flipped).mean(axis=0)
    return dict(
        attributes=list(names), alpha=alpha, num_samples=num_samples, truncation_psi=truncation_psi,
        per_attribute={
            name: dict(w_std_along_boundary=float(w_std_K[k]), alpha_in_std=float(alpha / w_std_K[k]),
                       positive_rate=float(positive_K[k]), flip_rate=float(flip_K[k]),
                       sensitivity=dict(zip(names, map(float, sensitivity_KxK[k]))))
            for k, name in enumerate(names)
        },
    )


def loss_balance(engine: Engine, latents_NxLxD: np.ndarray, images_NxHxWxC: np.ndarray,
                 phases: Sequence[Phase], *, batch_size: int = 8) -> dict[str, Any]:
    """The weighted gradient norm of each loss term at the given latents (e.g. finished inversions).

    Args:
      engine: an engine over the bundle's networks (its settings only choose alpha and the edit mode).
      latents_NxLxD, images_NxHxWxC: latents and their target images in [-1, 1] at G's resolution.
      phases: the phases whose weights the gradients are weighed with (one report row each).
      batch_size: latents per compiled call (a multiple of the engine's mesh size).

    Returns ``num_images``, ``terms`` (median unweighted value of each term the engine computes) and
    ``phases``: per phase, ``weights``, ``weighted_grad_norm`` (median over images of weight x |d term / d
    latent|) and ``magec_share`` (median over images of the MAGEC term's weighted gradient norm over the sum
    of all terms'; 0 when the networks cannot compute MAGEC).
    """
    names = engine.term_names
    parts = [engine.term_gradients(latents_NxLxD[i: i + batch_size], images_NxHxWxC[i: i + batch_size])
             for i in range(0, len(latents_NxLxD), batch_size)]
    terms_BxT, norms_BxT = (np.concatenate(arrays) for arrays in zip(*parts))
    rows = []
    for phase in phases:
        weights_T = np.asarray([phase.weight(t) for t in names], np.float64)
        weighted_BxT = norms_BxT * weights_T[None]
        magec_B = weighted_BxT[:, names.index("magec")] if "magec" in names else np.zeros(len(weighted_BxT))
        share_B = magec_B / np.maximum(weighted_BxT.sum(axis=1), 1e-30)
        rows.append(dict(
            weights=dict(zip(names, map(float, weights_T))),
            weighted_grad_norm=dict(zip(names, map(float, np.median(weighted_BxT, axis=0)))),
            magec_share=float(np.median(share_B)),
        ))
    return dict(num_images=int(terms_BxT.shape[0]), terms=dict(zip(names, map(float, np.median(terms_BxT, axis=0)))),
                phases=rows)

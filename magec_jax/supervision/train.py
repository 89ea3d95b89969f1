"""LinkNet training: the linear map W+ -> F's K logits fitted to F's binarised labels with F's own loss.

METHOD.md: Adam with default hyper-parameters (lr 1e-3, b1 0.9, b2 0.999, eps 1e-8), 10 epochs, loss L_F
(:func:`~magec_jax.inversion.magec_loss.descriptor_loss`, bce or softmax_ce). A held-out split measures
validation accuracy, plain and balanced (:func:`balanced_accuracy`).

``TrainSettings.class_balanced`` (off by default, a deviation from the paper's plain loss) weighs every
class by the inverse of its frequency in the training split (:func:`class_weights`), so that a rare label
(women, or smiles, among a generator's samples) counts as much as the common one; the weights average to 1
over the training split, so the loss keeps its scale.

An epoch is ONE jitted call: a ``lax.scan`` over the minibatches of a fresh permutation of the training rows
(the ragged tail is dropped; a different tail every epoch), with the parameters and Adam state donated. The
training data stay on the device; metrics come back once per epoch.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from magec_jax.errors import MagecError
from magec_jax.inversion.magec_loss import descriptor_loss
from magec_jax.models.interfaces import LossKind
from magec_jax.models.linknet import LinkNet, LinkNetConfig, linknet_apply


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """LinkNet training hyper-parameters (defaults: METHOD.md; batch size and split are ours)."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    val_fraction: float = 0.1
    class_balanced: bool = False


class TrainResult(NamedTuple):
    """A trained LinkNet and its history.

    Attributes:
      variables: LinkNet Flax variables (numpy).
      initial_loss: mean training-set loss before the first step.
      train_loss: mean minibatch loss of each epoch ``[epochs]``.
      val_loss: validation loss after each epoch ``[epochs]``.
      val_accuracy: per-output validation accuracy after each epoch ``[epochs, K]`` (bce: per attribute;
        softmax_ce: recall of each class, NaN for a class absent from the split).
      val_accuracy_mean: ``[epochs]``; bce: mean over attributes; softmax_ce: top-1 accuracy.
      val_balanced_accuracy: ``[K]`` after the last epoch, see :func:`balanced_accuracy`.
      positive_rate: ``[K]`` fraction of all samples whose target output is on (bce: the attribute is
        present; softmax_ce: the class), the label balance behind the accuracies.
      num_train, num_val: split sizes.
    """

    variables: dict
    initial_loss: float
    train_loss: np.ndarray
    val_loss: np.ndarray
    val_accuracy: np.ndarray
    val_accuracy_mean: np.ndarray
    val_balanced_accuracy: np.ndarray
    positive_rate: np.ndarray
    num_train: int
    num_val: int


def accuracy(logits_NxK: jax.Array, targets_NxK: jax.Array, loss_kind: LossKind) -> tuple[jax.Array, jax.Array]:
    """``(per_output_K, mean)`` agreement of logits with binarised targets (see :class:`TrainResult`)."""
    if loss_kind == "bce":
        per_k = jnp.mean(((logits_NxK > 0) == (targets_NxK > 0.5)).astype(jnp.float32), axis=0)
        return per_k, per_k.mean()
    hit_N = (jnp.argmax(logits_NxK, -1) == jnp.argmax(targets_NxK, -1)).astype(jnp.float32)
    per_class = (hit_N[:, None] * targets_NxK).sum(0) / targets_NxK.sum(0)
    return per_class, hit_N.mean()


def balanced_accuracy(logits_NxK: jax.Array, targets_NxK: jax.Array, loss_kind: LossKind) -> np.ndarray:
    """Per-output accuracy that a constant predictor cannot inflate: bce, the mean of the recalls of the
    present and the absent class of each attribute (0.5 for a constant guess; NaN when the split holds one
    class only); softmax_ce, the recall of each class (as :func:`accuracy`)."""
    if loss_kind != "bce":
        return np.asarray(accuracy(logits_NxK, targets_NxK, loss_kind)[0])
    pred_NxK, on_NxK = np.asarray(logits_NxK) > 0, np.asarray(targets_NxK) > 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = (pred_NxK & on_NxK).sum(0) / on_NxK.sum(0)
        tnr = (~pred_NxK & ~on_NxK).sum(0) / (~on_NxK).sum(0)
    return (tpr + tnr) / 2


def split_indices(n: int, val_fraction: float, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """A random ``(train, val)`` partition of ``range(n)`` with ``round(n * val_fraction)`` validation rows."""
    num_val = int(round(n * val_fraction))
    if not 0 < num_val < n:
        raise MagecError(f"a validation fraction of {val_fraction} of {n} samples leaves an empty split")
    perm = np.asarray(jax.random.permutation(key, n))
    return perm[num_val:], perm[:num_val]


def class_weights(targets_NxK: np.ndarray, loss_kind: LossKind) -> np.ndarray:
    """Inverse-frequency class weights, each class's total weight equal, averaging 1 over ``targets``.

    bce: ``[2, K]``, row 0 for absent and row 1 for present labels: ``0.5 / (1 - p_k)`` and ``0.5 / p_k``
    with ``p_k`` the attribute's positive rate. softmax_ce: ``[K]``, ``1 / (C p_c)`` for the ``C`` classes that
    occur (0 for a class that never does).

    Raises:
      MagecError: a bce attribute that is always or never present (no weighting can balance it).
    """
    on = np.asarray(targets_NxK, np.float64) > 0.5
    rate_K = on.mean(axis=0)
    if loss_kind == "bce":
        if np.any((rate_K == 0) | (rate_K == 1)):
            raise MagecError(f"class-balanced LinkNet loss: an attribute has one class only (positive rates {rate_K})")
        return np.stack([0.5 / (1 - rate_K), 0.5 / rate_K]).astype(np.float32)
    present = rate_K > 0
    return np.where(present, 1.0 / (present.sum() * np.where(present, rate_K, 1.0)), 0.0).astype(np.float32)


def sample_weights(targets_xK: jax.Array, weights: jax.Array, loss_kind: LossKind) -> jax.Array:
    """Per-element weights ``[..., K]`` (bce) or per-sample weights ``[...]`` (softmax_ce) from :func:`class_weights`."""
    if loss_kind == "bce":
        on, off = (jnp.broadcast_to(w_K, targets_xK.shape) for w_K in (weights[1], weights[0]))
        return targets_xK * on + (1.0 - targets_xK) * off
    return targets_xK @ weights


def weighted_descriptor_loss(logits_xK: jax.Array, targets_xK: jax.Array, weights: jax.Array | None,
                             loss_kind: LossKind) -> jax.Array:
    """L_F per sample (leading axes kept), class-weighted when ``weights`` (:func:`class_weights`) is given."""
    if weights is None:
        return descriptor_loss(logits_xK, targets_xK, loss_kind)
    if loss_kind == "bce":
        per_k = optax.sigmoid_binary_cross_entropy(logits_xK, targets_xK)
        return (per_k * sample_weights(targets_xK, weights, loss_kind)).mean(axis=-1)
    return descriptor_loss(logits_xK, targets_xK, loss_kind) * sample_weights(targets_xK, weights, loss_kind)


def _loss(variables, w_BxLxD, targets_BxK, weights, loss_kind: LossKind) -> jax.Array:
    return weighted_descriptor_loss(linknet_apply(variables, w_BxLxD), targets_BxK, weights, loss_kind).mean()


@functools.lru_cache(maxsize=None)
def _epoch_fn(loss_kind: LossKind, batch_size: int, num_batches: int, learning_rate: float) -> Callable:
    """Jitted ``(variables, opt_state, w, targets, weights, key) -> (variables, opt_state, mean_loss)``;
    ``weights`` is :func:`class_weights` or None (the plain loss)."""
    optimizer = optax.adam(learning_rate)

    def epoch(variables, opt_state, w_NxLxD, targets_NxK, weights, key):
        order = jax.random.permutation(key, w_NxLxD.shape[0])[: num_batches * batch_size]

        def step(carry, idx_B):
            params, state = carry
            loss, grads = jax.value_and_grad(_loss)(params, w_NxLxD[idx_B], targets_NxK[idx_B], weights, loss_kind)
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        (variables, opt_state), losses = jax.lax.scan(
            step, (variables, opt_state), order.reshape(num_batches, batch_size)
        )
        return variables, opt_state, losses.mean()

    return jax.jit(epoch, donate_argnums=(0, 1))


@functools.lru_cache(maxsize=None)
def _eval_fn(loss_kind: LossKind) -> Callable:
    """Jitted ``(variables, w, targets, weights) -> (loss, per_output_accuracy, mean_accuracy)``; the loss is
    the training objective (class-weighted when ``weights`` is given)."""

    def evaluate(variables, w_NxLxD, targets_NxK, weights):
        logits = linknet_apply(variables, w_NxLxD)
        return (weighted_descriptor_loss(logits, targets_NxK, weights, loss_kind).mean(),
                *accuracy(logits, targets_NxK, loss_kind))

    return jax.jit(evaluate)


def train_linknet(
    w_NxLxD: np.ndarray,
    targets_NxK: np.ndarray,
    *,
    loss_kind: LossKind,
    settings: TrainSettings,
    key: jax.Array,
    log: Callable[[str], None] = lambda msg: None,
    attribute_names: tuple[str, ...] = (),
) -> TrainResult:
    """Fits a LinkNet to ``(w, targets)`` with a held-out validation split.

    Args:
      w_NxLxD: W+ latents.
      targets_NxK: binarised F outputs (:func:`~magec_jax.inversion.magec_loss.binarize`).
      loss_kind: F's loss, ``"bce"`` or ``"softmax_ce"``.
      settings: epochs, batch size, learning rate, validation fraction.
      key: typed key; split into the ``split``, ``init`` and ``shuffle`` streams.
      log: receives one progress line per epoch.
      attribute_names: names for the per-output accuracies in the progress lines.
    """
    n, num_ws, w_dim = w_NxLxD.shape
    keys = dict(zip(("split", "init", "shuffle"), jax.random.split(key, 3)))
    train_idx, val_idx = split_indices(n, settings.val_fraction, keys["split"])
    batch_size = min(settings.batch_size, len(train_idx))
    num_batches = len(train_idx) // batch_size
    w_train, t_train = jnp.asarray(w_NxLxD[train_idx]), jnp.asarray(targets_NxK[train_idx])
    w_val, t_val = jnp.asarray(w_NxLxD[val_idx]), jnp.asarray(targets_NxK[val_idx])
    weights = jnp.asarray(class_weights(targets_NxK[train_idx], loss_kind)) if settings.class_balanced else None

    cfg = LinkNetConfig(num_ws=num_ws, w_dim=w_dim, num_outputs=targets_NxK.shape[1])
    variables = LinkNet(cfg).init(keys["init"], jnp.zeros((1, num_ws, w_dim), jnp.float32))
    opt_state = optax.adam(settings.learning_rate).init(variables)
    epoch_fn = _epoch_fn(loss_kind, batch_size, num_batches, settings.learning_rate)
    eval_fn = _eval_fn(loss_kind)
    initial_loss = float(eval_fn(variables, w_train, t_train, weights)[0])
    log(f"linknet: {len(train_idx)} train / {len(val_idx)} val samples, {num_batches} steps of {batch_size} "
        f"per epoch; {'class-balanced' if settings.class_balanced else 'plain'} loss, initial {initial_loss:.4f}")
    history = []
    for epoch in range(settings.epochs):
        variables, opt_state, train_loss = epoch_fn(variables, opt_state, w_train, t_train, weights,
                                                    jax.random.fold_in(keys["shuffle"], epoch))
        metrics = jax.device_get((train_loss, *eval_fn(variables, w_val, t_val, weights)))  # one fetch per epoch
        if not all(np.all(np.isfinite(m)) for m in metrics[:2]):
            raise MagecError(f"linknet: non-finite loss in epoch {epoch + 1} (learning rate {settings.learning_rate})")
        history.append(metrics)
        named = ", ".join(f"{a} {v:.3f}" for a, v in zip(attribute_names, metrics[2]))
        log(f"linknet: epoch {epoch + 1}/{settings.epochs} train loss {metrics[0]:.4f} val loss {metrics[1]:.4f} "
            f"val accuracy {metrics[3]:.3f}" + (f" ({named})" if named else ""))
    train_loss, val_loss, val_acc, val_mean = (np.asarray([h[i] for h in history]) for i in range(4))
    balanced = balanced_accuracy(linknet_apply(variables, w_val), t_val, loss_kind)
    return TrainResult(
        variables=jax.tree.map(np.asarray, jax.device_get(variables)),
        initial_loss=initial_loss,
        train_loss=train_loss,
        val_loss=val_loss,
        val_accuracy=val_acc.reshape(settings.epochs, -1),
        val_accuracy_mean=val_mean,
        val_balanced_accuracy=balanced,
        positive_rate=np.asarray(targets_NxK > 0.5).mean(0),
        num_train=len(train_idx),
        num_val=len(val_idx),
    )


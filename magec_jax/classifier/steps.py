"""The classifier's optimiser (AdamW per parameter group, discriminative learning rates, head-only then full
phase) and its jitted train / eval steps."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from magec_jax.classifier.config import GROUPS
from magec_jax.errors import FileFormatError
from magec_jax.models import resnet
from magec_jax.weights import load_converted


@dataclasses.dataclass(frozen=True)
class StepSetup:
    """Everything the jitted steps close over (hashable, so that equal setups share compilations)."""

    num_classes: int
    dtype: str
    head_steps: int
    full_steps: int
    head_lr: float
    group_lrs: tuple[float, float, float]
    schedule: str
    pct_start: float
    b1: float
    b2: float
    eps: float
    weight_decay: float

    @property
    def model(self) -> resnet.ResNet50:
        return resnet.ResNet50(num_classes=self.num_classes, dtype=jnp.dtype(self.dtype))


class TrainState(NamedTuple):
    """Everything a checkpoint holds: steps done, the variables and the optimiser state."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def _phase_schedule(peak: float, steps: int, setup: StepSetup) -> optax.Schedule:
    if setup.schedule == "constant" or steps == 0:
        return optax.constant_schedule(peak)
    return optax.cosine_onecycle_schedule(steps, peak, pct_start=setup.pct_start)


def make_optimizer(setup: StepSetup) -> optax.GradientTransformation:
    """AdamW per parameter group; group lrs are 0 in the head phase except the head's."""
    transforms = {}
    for group, peak in zip(GROUPS, setup.group_lrs):
        head_phase = _phase_schedule(setup.head_lr if group == "head" else 0.0, setup.head_steps, setup)
        full_phase = _phase_schedule(peak, setup.full_steps, setup)
        lr = optax.join_schedules([head_phase, full_phase], [setup.head_steps])
        transforms[group] = optax.adamw(lr, b1=setup.b1, b2=setup.b2, eps=setup.eps, weight_decay=setup.weight_decay)
    return optax.multi_transform(transforms, param_groups)


def param_groups(params: dict) -> dict:
    """The group label of every parameter, by top-level module (``conv1``, ``layer3.2``, ``fc``, ...)."""

    def group(module: str) -> str:
        if module == "fc":
            return "head"
        return "late" if module.startswith(("layer3", "layer4")) else "early"

    return {module: jax.tree_util.tree_map(lambda _, g=group(module): g, sub) for module, sub in params.items()}


def _bce_loss(logits_BxK: jax.Array, labels_BxK: jax.Array) -> jax.Array:
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits_BxK, labels_BxK))


@functools.partial(jax.jit, static_argnames=("setup", "head_only"), donate_argnums=0)
def train_step(
    state: TrainState, images_BxSxSx3: jax.Array, labels_BxK: jax.Array, flip_B: jax.Array, *,
    setup: StepSetup, head_only: bool,
) -> tuple[TrainState, jax.Array]:
    """One optimisation step on a batch in [-1, 1]; ``head_only`` freezes the body (eval-mode BatchNorm)."""
    flipped = jnp.where(flip_B[:, None, None, None], images_BxSxSx3[:, :, ::-1], images_BxSxSx3)
    x = resnet.imagenet_normalize(flipped)

    def loss_fn(params):
        if head_only:
            params = {k: v if k == "fc" else jax.lax.stop_gradient(v) for k, v in params.items()}
            out = setup.model.apply({"params": params, "batch_stats": state.batch_stats}, x)
            return _bce_loss(out.logits_BxK, labels_BxK), state.batch_stats
        out, updates = setup.model.apply(
            {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return _bce_loss(out.logits_BxK, labels_BxK), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = make_optimizer(setup).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, batch_stats, opt_state), loss


@functools.partial(jax.jit, static_argnames=("setup",))
def eval_step(params, batch_stats, images_BxSxSx3: jax.Array, *, setup: StepSetup) -> jax.Array:
    """Eval-mode logits of a batch in [-1, 1]."""
    x = resnet.imagenet_normalize(images_BxSxSx3)
    return setup.model.apply({"params": params, "batch_stats": batch_stats}, x).logits_BxK


@functools.partial(jax.jit, static_argnames=("setup", "image_size"))
def _init_variables(key: jax.Array, *, setup: StepSetup, image_size: int) -> dict:
    return setup.model.init(key, jnp.zeros((1, image_size, image_size, 3), jnp.float32))


def init_state(setup: StepSetup, image_size: int, seed: int, init_weights: Path | None) -> TrainState:
    """Fresh variables (seeded), with every layer but ``fc`` taken from ``init_weights`` when given."""
    variables = _init_variables(jax.random.key(seed), setup=setup, image_size=image_size)
    params, batch_stats = dict(variables["params"]), dict(variables["batch_stats"])
    if init_weights is not None:
        source = load_converted(init_weights, kind=resnet.KIND).variables
        for tree, collection in ((params, "params"), (batch_stats, "batch_stats")):
            for module in tree:
                if module == "fc":
                    continue
                loaded = jax.tree_util.tree_map(jnp.asarray, source[collection][module])
                if jax.tree_util.tree_map(jnp.shape, loaded) != jax.tree_util.tree_map(jnp.shape, tree[module]):
                    raise FileFormatError(init_weights, f"{collection}/{module} does not fit a ResNet-50")
                tree[module] = loaded
    return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, make_optimizer(setup).init(params))


"""Latent editing directions: InterFaceGAN boundaries (loaded or fitted), GANSpace PCA, interpolation.

Shapes: a boundary is ``[w_dim]`` (applied to every layer of W+) or ``[num_ws, w_dim]`` (per layer); latents
are W+ ``[..., num_ws, w_dim]``. Edits are pure jnp functions so they jit, vmap and differentiate.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from magec_jax.errors import FileFormatError

_BOUNDARY_FILE = re.compile(r"^boundary_(?P<name>.+)\.npy$")


# ---- loading -----------------------------------------------------------------------------------------------


def load_boundary(path: str | os.PathLike) -> np.ndarray:
    """One boundary file as float32 ``[w_dim]`` or ``[num_ws, w_dim]``.

    Reads official InterFaceGAN ``.npy`` (``(1, 512)``) and e4e torch ``.pt`` directions (``(1, 512)``,
    ``(1, 18, 512)``; read without torch and without executing code). A leading axis of size 1 is dropped.
    """
    path = Path(path)
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise FileFormatError(path, f"unreadable boundary ({e})") from None
    else:
        from ports.torch_files import load_torch

        arr = load_torch(path)
        if not isinstance(arr, np.ndarray):
            raise FileFormatError(path, f"expected one tensor, found {type(arr).__name__}")
    arr = np.asarray(arr, np.float32)
    while arr.ndim > 1 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (1, 2) or not np.all(np.isfinite(arr)):
        raise FileFormatError(path, f"not a boundary: shape {arr.shape} (expected [w_dim] or [num_ws, w_dim])")
    return arr


def load_boundary_folder(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every ``boundary_<Attr>.npy`` of a folder (the InterFaceGAN release layout) as ``{Attr: boundary}``."""
    folder = Path(folder)
    found = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = _BOUNDARY_FILE.match(path.name)
        if m:
            found[m.group("name")] = load_boundary(path)
    if not found:
        raise FileFormatError(folder, "no boundary_<Attr>.npy files found")
    return found


@dataclasses.dataclass(frozen=True)
class GanSpace:
    """PCA of W: ``mean [D]``, ``components [N, D]`` (unit rows), ``std [N]`` (stdev along each)."""

    mean: np.ndarray
    components: np.ndarray
    std: np.ndarray


def load_ganspace(path: str | os.PathLike) -> GanSpace:
    """GANSpace PCA file: e4e's ``ffhq_pca.pt`` (``mean (1,512)``, ``comp (80,1,512)``, ``std (80,)``) or an
    ``.npz`` with ``mean``/``components``/``std`` (as :func:`save_ganspace` writes)."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
        keys = ("mean", "components", "std")
    else:
        from ports.torch_files import load_torch

        d = load_torch(path)
        keys = ("mean", "comp", "std")
    if not isinstance(d, dict) or any(k not in d for k in keys):
        raise FileFormatError(path, f"not a GANSpace PCA file (expected keys {', '.join(keys)})")
    mean, comp, std = (np.asarray(d[k], np.float32) for k in keys)
    comp = comp.reshape(comp.shape[0], -1)
    return GanSpace(mean=mean.reshape(-1), components=comp, std=std.reshape(-1))


def save_ganspace(path: str | os.PathLike, pca: GanSpace) -> None:
    """Writes a GANSpace PCA as ``.npz`` (``mean``, ``components``, ``std``)."""
    np.savez(path, mean=pca.mean, components=pca.components, std=pca.std)


# ---- fitting -----------------------------------------------------------------------------------------------


def fit_ganspace(w_NxD: np.ndarray, num_components: int = 80) -> GanSpace:
    """PCA of mapped latents (GANSpace on W): principal directions by SVD of the centred samples."""
    w = np.asarray(w_NxD, np.float64)
    mean = w.mean(0)
    _, s, vt = np.linalg.svd(w - mean, full_matrices=False)
    k = min(num_components, vt.shape[0])
    std = s[:k] / np.sqrt(max(w.shape[0] - 1, 1))
    return GanSpace(mean=mean.astype(np.float32), components=vt[:k].astype(np.float32), std=std.astype(np.float32))


@dataclasses.dataclass(frozen=True)
class BoundaryFit:
    """A fitted InterFaceGAN boundary: unit ``normal [D]``, SVM accuracies, and the samples used."""

    normal: np.ndarray
    train_accuracy: float
    val_accuracy: float
    num_train: int
    num_val: int


def fit_boundary(
    latents_NxD: np.ndarray,
    scores_N: np.ndarray,
    *,
    ratio: float = 0.02,
    val_fraction: float = 0.3,
    c: float = 1.0,
    seed: int = 0,
    max_iter: int = 300,
) -> BoundaryFit:
    """InterFaceGAN's recipe: a linear SVM on the ``ratio`` highest- and lowest-scoring samples.

    The top ``ratio`` of samples by score are positives, the bottom ``ratio`` negatives; they are shuffled
    (``seed``) and split ``1 - val_fraction`` / ``val_fraction``. The SVM is the primal L2-regularised
    squared-hinge problem (scikit-learn ``LinearSVC`` default, C = ``c``) solved with L-BFGS on
    standardised-free raw latents; the boundary is its unit normal, oriented towards higher scores.
    """
    x = np.asarray(latents_NxD, np.float64)
    scores = np.asarray(scores_N, np.float64)
    n = x.shape[0]
    num = int(n * ratio)
    if num < 2:
        raise ValueError(f"{n} samples give {num} per side at ratio {ratio}: need more samples")
    order = np.argsort(scores)
    pos, neg = x[order[-num:]], x[order[:num]]
    data = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(num), -np.ones(num)])
    perm = np.random.default_rng(seed).permutation(2 * num)
    data, labels = data[perm], labels[perm]
    n_train = int(round(2 * num * (1 - val_fraction)))
    w, b = _linear_svm(data[:n_train], labels[:n_train], c=c, max_iter=max_iter)

    def accuracy(xs, ys):
        return float(np.mean(np.sign(xs @ w + b) == ys)) if len(ys) else float("nan")

    normal = (w / np.linalg.norm(w)).astype(np.float32)
    return BoundaryFit(
        normal=normal,
        train_accuracy=accuracy(data[:n_train], labels[:n_train]),
        val_accuracy=accuracy(data[n_train:], labels[n_train:]),
        num_train=n_train,
        num_val=2 * num - n_train,
    )


def _linear_svm(x_NxD: np.ndarray, y_N: np.ndarray, *, c: float, max_iter: int) -> tuple[np.ndarray, float]:
    """argmin_{w,b} 0.5 |w|^2 + c * sum(max(0, 1 - y (x.w + b))^2), by L-BFGS in float32."""
    w, b = _svm_solve(jnp.asarray(x_NxD, jnp.float32), jnp.asarray(y_N, jnp.float32), jnp.float32(c),
                      max_iter=max_iter)
    return np.asarray(w, np.float64), float(b)


@functools.partial(jax.jit, static_argnames="max_iter")
def _svm_solve(x_NxD: jax.Array, y_N: jax.Array, c: jax.Array, *, max_iter: int) -> tuple[jax.Array, jax.Array]:
    """The L-BFGS iterations as one ``lax.while_loop`` (one compile per data shape, no host sync per step),
    until the gradient norm drops below 1e-4 or ``max_iter`` steps."""

    def objective(params):
        w, b = params
        margin = jnp.maximum(0.0, 1.0 - y_N * (x_NxD @ w + b))
        return 0.5 * jnp.dot(w, w) + c * jnp.sum(margin**2)

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=objective)
        return optax.apply_updates(params, updates), state

    def running(carry):
        _, state = carry
        count = optax.tree_utils.tree_get(state, "count")
        grad_norm = optax.tree_utils.tree_norm(optax.tree_utils.tree_get(state, "grad"))
        return (count == 0) | ((count < max_iter) & (grad_norm >= 1e-4))

    params = (jnp.zeros(x_NxD.shape[1], jnp.float32), jnp.zeros((), jnp.float32))
    params, _ = jax.lax.while_loop(running, step, (params, solver.init(params)))
    return params


# ---- edits -------------------------------------------------------------------------------------------------


def _layered(direction: jax.Array, num_ws: int) -> jax.Array:
    return direction if direction.ndim == 2 else jnp.broadcast_to(direction, (num_ws, direction.shape[-1]))


def interfacegan_edit(w_xLxD: jax.Array, boundary: jax.Array, strength: float | jax.Array) -> jax.Array:
    """``w + strength * n`` on every layer (``n`` ``[D]``) or per layer (``n`` ``[L, D]``)."""
    step = strength * _layered(jnp.asarray(boundary), w_xLxD.shape[-2])
    return w_xLxD + jnp.broadcast_to(step, w_xLxD.shape)


def ganspace_edit(
    w_xLxD: jax.Array,
    pca: GanSpace,
    component: int,
    strength: float | jax.Array,
    layers: tuple[int, int] | None = None,
) -> jax.Array:
    """GANSpace: move layers ``[start, end)`` (all when None) by ``strength`` standard deviations along
    principal component ``component``."""
    num_ws = w_xLxD.shape[-2]
    start, end = layers if layers is not None else (0, num_ws)
    if not 0 <= start < end <= num_ws:
        raise ValueError(f"layer range {layers} outside 0..{num_ws}")
    step = strength * pca.std[component] * jnp.asarray(pca.components[component])
    mask = ((jnp.arange(num_ws) >= start) & (jnp.arange(num_ws) < end)).astype(w_xLxD.dtype)[:, None]
    return w_xLxD + jnp.broadcast_to(mask * step[None, :], w_xLxD.shape)


def interpolate(w_a: jax.Array, w_b: jax.Array, t: float | jax.Array) -> jax.Array:
    """Linear interpolation ``(1 - t) * w_a + t * w_b``."""
    return w_a + t * (w_b - w_a)

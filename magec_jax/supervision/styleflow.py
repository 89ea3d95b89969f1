"""The job behind ``python -m magec_jax.styleflow``: trains a StyleFlow prior for a bundle's generator.

Data: ``sampling.num_samples`` single-w samples of the bundle's generator (:mod:`.samples`; the same cache, and
with the same settings and seed the same samples, as the InterFaceGAN boundaries), each w with its descriptor
F's threshold-free outputs as the flow's context: the faceres+emotion descriptor's scores (``gender_logit``,
``expected_age``, ``happy_log_odds``), a ResNet-50 F's logits. StyleFlow trains on continuous attributes (the
Microsoft Face API's values); these are their counterpart. A ``val_fraction`` of the samples is held out.

Recipe (the official ``train_flow.py`` and ``module/``, where they state it):
  * ``cnf(w_dim, flow.hidden_dims, context_dim, flow.num_blocks)``: MovingBatchNorm, CNF of ConcatSquash layers,
    MovingBatchNorm (:mod:`magec_jax.models.styleflow`); the end time T = ``sqrt_end_time ** 2`` is learnt.
  * Loss: the negative log-likelihood ``-mean_b(sum log N(z; 0, I) - delta_logp)``, Adam at ``learning_rate``
    (official 1e-3, batch 5, 3 epochs over 10,000 latents).
  * The log-density change by Hutchinson's estimator with Gaussian noise, drawn once per solve.
  * dopri5 at ``atol = rtol = 1e-5`` with one step size per batch (torchdiffeq's step control).
  * MovingBatchNorm in training normalises with its running statistics (``bn_lag = 0``, the official setting)
    and moves them ``bn_decay = 0.1`` towards each batch's mean and unbiased variance.

Deviations, each for a stated reason:
  * Gradients are those of the computed solve (diffrax's recursive checkpointing), not the adjoint ODE's
    (``use_adjoint=True``): exact for what is integrated, and memory is no issue at these sizes.
  * Each sample's w enters once (``[B, 1, D]``). The official latents are ``[N, 1, 18, 512]`` W+ copies of
    one w; their rows are equal and the loss sums over rows, so the gradient differs only by the factor 18.
  * The context is standardised with the training split's mean and standard deviation, stored with the flow
    (users give raw values, e.g. an age in years): the official attributes span very different ranges
    (age in years next to 0/1 flags), which a ConcatSquash gate takes in unscaled.
  * Held-out NLL with the exact divergence (the trace of the Jacobian), so the reported figure is not an
    estimate; each image its own dopri5 step sizes.

Outputs: ``BUNDLE/styleflow/`` (converted, kind ``styleflow``; ``extra.editing``: the context's names, mean,
standard deviation and the range seen in training, the edit layer rule, where the context comes from; ``extra``
also has the NLL figures and the run's time), named in the manifest as ``styleflow``. The run folder
``out_dir`` holds ``checkpoints/`` (orbax: parameters, running statistics, Adam state, step; a rerun resumes)
and ``metrics.jsonl`` (one line per logged step and the final held-out figures).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from magec_jax.bundle import Bundle, label_source, load_bundle, update_manifest
from magec_jax.configdicts import from_configdict, to_configdict
from magec_jax.models.styleflow_editor import StyleFlowEditor
from magec_jax.errors import MagecError
from magec_jax.images import atomic_write_json
from magec_jax.logs import Log, to_stderr
from magec_jax.models import styleflow as sf
from magec_jax.models.cnf import ODESolver
from magec_jax.supervision.job import BoundarySettings, SupervisionConfig, load_samples
from magec_jax.supervision.samples import SampleSettings
from magec_jax.weights import Converted, save_converted

CONVERTER = "magec_jax.supervision.styleflow/1"
LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class FlowSettings:
    """The prior's architecture and its training (official defaults where stated)."""

    hidden_dims: str = "512-512-512-512-512"  # ODE net widths, as the official ``flow_modules`` string
    num_blocks: int = 1
    batch_size: int = 5
    epochs: int = 3
    learning_rate: float = 1e-3
    val_fraction: float = 0.1
    bn_decay: float = 0.1
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 1000  # dopri5 steps per solve; reaching it is an error
    eval_batch: int = 64
    estimate_samples: int = 64  # held-out samples whose context is estimated by maximum likelihood (0: none)
    estimate_steps: int = 100

    @property
    def widths(self) -> tuple[int, ...]:
        """``hidden_dims`` as integers."""
        try:
            return tuple(int(v) for v in self.hidden_dims.split("-"))
        except ValueError:
            raise ValueError(f"flow.hidden_dims must be widths joined by '-', e.g. 512-512-512, got "
                             f"{self.hidden_dims!r}") from None


@dataclasses.dataclass(frozen=True)
class StyleFlowJobConfig:
    """A ``configs/styleflow_*.py`` config, typed."""

    bundle: str = ""
    out_dir: str = ""  # checkpoints/ and metrics.jsonl; the trained prior goes into the bundle
    seed: int = 0
    cache_dir: str = ""  # the sample cache; empty: BUNDLE/supervision (shared with magec_jax.linknet)
    matmul_precision: str = "highest"
    sampling: SampleSettings = SampleSettings(num_samples=10_000, batch_size=32, shard_size=1_000)
    flow: FlowSettings = FlowSettings()
    log_every: int = 100
    checkpoint_every: int = 500
    keep_checkpoints: int = 2

    def __post_init__(self):
        for name in ("bundle", "out_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} must be set (--config.{name}=...)")
        positive = {"flow.batch_size": self.flow.batch_size, "flow.epochs": self.flow.epochs,
                    "flow.num_blocks": self.flow.num_blocks, "log_every": self.log_every,
                    "checkpoint_every": self.checkpoint_every, "sampling.num_samples": self.sampling.num_samples}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not 0 < self.flow.val_fraction < 1:
            raise ValueError(f"flow.val_fraction must be in (0, 1), got {self.flow.val_fraction}")
        self.flow.widths  # noqa: B018 -- parses, or one clear error

    @property
    def supervision(self) -> SupervisionConfig:
        """The supervision job whose single-w samples these are (same cache, seed and random stream)."""
        return SupervisionConfig(bundle=self.bundle, seed=self.seed, cache_dir=self.cache_dir,
                                 matmul_precision=self.matmul_precision, sampling=self.sampling,
                                 boundaries=BoundarySettings(num_samples=self.sampling.num_samples))

    @property
    def train_solver(self) -> ODESolver:
        return ODESolver("dopri5", rtol=self.flow.rtol, atol=self.flow.atol, max_steps=self.flow.max_steps,
                         batch_step_control=True)

    @property
    def eval_solver(self) -> ODESolver:
        return ODESolver("dopri5", rtol=self.flow.rtol, atol=self.flow.atol, max_steps=self.flow.max_steps)


def default_config() -> ml_collections.ConfigDict:
    """The defaults of :class:`StyleFlowJobConfig` as the ConfigDict the config files start from."""
    return to_configdict(StyleFlowJobConfig)


def context_names(bundle: Bundle) -> tuple[str, ...]:
    """The names of the context values a bundle's F gives (its label source's outputs)."""
    descriptor = bundle.descriptor()
    if descriptor is None:
        raise MagecError(f"{bundle.path}: the bundle has no descriptor F to give the flow its attributes")
    outputs = label_source(bundle, descriptor).spec["outputs"]
    return tuple(outputs) if isinstance(outputs, list) else descriptor.attribute_names


def default_edit_layers(num_ws: int, names: tuple[str, ...]) -> dict[str, list[int]]:
    """The layer rule for a bundle's own attributes: an edit takes the rows of the 4-32 px blocks (the first 8,
    the official rule's range for Gender; its other attributes use parts of it) from the reverse solve and
    keeps the finer rows, which carry colour and texture rather than the attribute."""
    rows = list(range(min(8, num_ws)))
    return {name: rows for name in names}


def standard_normal_logprob(z: jax.Array) -> jax.Array:
    """Elementwise ``log N(z; 0, 1)``."""
    return -0.5 * LOG_2PI - 0.5 * jnp.square(z)


def nll_per_sample(out: sf.FlowOutput) -> jax.Array:
    """``-log p(w)`` per sample from a forward solve started at ``logp = 0``: ``-(sum log N(z) - delta_logp)``."""
    logpz_B = jnp.sum(standard_normal_logprob(out.x_BxLxD), axis=(1, 2))
    return -(logpz_B - jnp.sum(out.logp_BxLx1, axis=(1, 2)))


def _train_step_fn(config: sf.StyleFlowConfig, solver: ODESolver, optimizer: optax.GradientTransformation,
                   bn_decay: float):
    def loss_fn(params, stats, w_BxLxD, ctx_BxM, eps_KxBxLxD):
        out = sf.flow({"params": params, "batch_stats": stats}, w_BxLxD, ctx_BxM, None, eps_KxBxLxD, False,
                      config=config, divergence="hutchinson", solver=solver, input_moments=True)
        return jnp.mean(nll_per_sample(out)), out

    @jax.jit
    def step(params, stats, opt_state, w_BxLxD, ctx_BxM, key):
        eps = jax.random.normal(key, (config.num_blocks,) + w_BxLxD.shape, w_BxLxD.dtype)
        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, w_BxLxD, ctx_BxM, eps)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        stats = {name: {"running_mean": s["running_mean"] - bn_decay * (s["running_mean"] - out.input_moments[name][0]),
                        "running_var": s["running_var"] - bn_decay * (s["running_var"] - out.input_moments[name][1])}
                 for name, s in stats.items()}
        return params, stats, opt_state, loss, jnp.mean(out.nfe_B)

    return step


def heldout_nll(config: sf.StyleFlowConfig, variables: dict, w_NxLxD: np.ndarray, ctx_NxM: np.ndarray,
                solver: ODESolver, batch: int) -> np.ndarray:
    """``-log p(w | ctx)`` per sample with the exact divergence, each sample its own step sizes; the last
    batch is padded to keep one compiled shape."""
    fn = jax.jit(lambda v, w, c: nll_per_sample(sf.flow(v, w, c, config=config, divergence="exact", solver=solver)))
    n = len(w_NxLxD)
    out = []
    for start in range(0, n, batch):
        idx = np.minimum(np.arange(start, start + batch), n - 1)
        out.append(np.asarray(fn(variables, w_NxLxD[idx], ctx_NxM[idx]))[: min(batch, n - start)])
    return np.concatenate(out)


def gaussian_nll(train_NxD: np.ndarray, heldout_NxD: np.ndarray) -> float:
    """The held-out NLL (nats per sample) of a full-covariance Gaussian fitted to the training latents, without
    the context: the figure a flow must beat to have learnt more than the latents' mean and covariance."""
    x = train_NxD.astype(np.float64)
    mean = x.mean(0)
    cov = np.cov(x, rowvar=False) + 1e-6 * np.eye(x.shape[1])
    _, logdet = np.linalg.slogdet(cov)
    d = heldout_NxD.astype(np.float64) - mean
    maha = np.einsum("nd,nd->n", d @ np.linalg.inv(cov), d)
    return float(np.mean(0.5 * (maha + logdet + x.shape[1] * LOG_2PI)))


def estimate_recovery(config: sf.StyleFlowConfig, variables: dict, w_NxLxD: np.ndarray, true_NxM: np.ndarray,
                      mean: np.ndarray, std: np.ndarray, names: tuple[str, ...], solver: ODESolver,
                      steps: int) -> dict[str, dict[str, float]]:
    """How well maximum likelihood over the context (:meth:`StyleFlowEditor.estimate`) recovers the known context
    of generated samples: per value, Pearson's r, the mean absolute error in training standard deviations, and
    the same error of always guessing the training mean."""
    editor = StyleFlowEditor(config, variables, names, names, mean, std, None, None, {}, None, "trained prior", solver)
    est = editor.estimate(w_NxLxD, steps=steps)
    out = {}
    for k, name in enumerate(names):
        r = np.corrcoef(est[:, k], true_NxM[:, k])[0, 1] if len(est) > 1 else float("nan")
        out[name] = {"pearson_r": float(r), "mae_std": float(np.mean(np.abs(est[:, k] - true_NxM[:, k])) / std[k]),
                     "mean_guess_mae_std": float(np.mean(np.abs(mean[k] - true_NxM[:, k])) / std[k])}
    return out


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng([seed, 11]).permutation(n)
    num_val = max(1, round(n * val_fraction))
    return np.sort(order[num_val:]), np.sort(order[:num_val])


def _batch(train_idx: np.ndarray, batch_size: int, step: int, seed: int) -> np.ndarray:
    """The training samples of ``step``: epochs are seeded permutations read in order (resumable)."""
    per_epoch = len(train_idx) // batch_size
    epoch, pos = divmod(step, per_epoch)
    order = np.random.default_rng([seed, 12, epoch]).permutation(len(train_idx))
    return train_idx[np.sort(order[pos * batch_size:(pos + 1) * batch_size])]


def run(config: ml_collections.ConfigDict, *, log: Log = to_stderr) -> dict[str, Any]:
    """Trains (or resumes) the prior as ``config`` says and stores it in the bundle; returns a summary with the
    held-out NLL (``heldout_nll``: nats per sample, ``heldout_nll_per_dim``), the steps and the seconds."""
    job = from_configdict(StyleFlowJobConfig, config)
    bundle = load_bundle(job.bundle)
    names = context_names(bundle)
    gen_cfg = bundle.generator[0]
    run_dir = Path(job.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    samples = load_samples(bundle, job.supervision, "single", log=log)
    w_NxLxD = samples.w[:, None, :].astype(np.float32)
    train_idx, val_idx = _split(len(w_NxLxD), job.flow.val_fraction, job.seed)
    if len(train_idx) < job.flow.batch_size:
        raise MagecError(f"{bundle.path}: {len(train_idx)} training samples do not fill one batch of "
                         f"{job.flow.batch_size}")
    outputs = samples.outputs.astype(np.float64)
    mean, std = outputs[train_idx].mean(0), outputs[train_idx].std(0)
    if not np.all(std > 0):
        raise MagecError(f"{bundle.path}: F's output {names[int(np.argmin(std))]!r} is constant on the samples")
    ctx_NxM = ((outputs - mean) / std).astype(np.float32)

    fcfg = sf.StyleFlowConfig(w_dim=gen_cfg.w_dim, context_dim=len(names), hidden_dims=job.flow.widths,
                              num_blocks=job.flow.num_blocks)
    keys = dict(zip(("init", "noise"), jax.random.split(jax.random.key(job.seed), 2)))
    variables = sf.StyleFlow(fcfg).init(keys["init"], jnp.zeros((1, 1, fcfg.w_dim)), jnp.zeros((1, fcfg.context_dim)))
    optimizer = optax.adam(job.flow.learning_rate)
    state = {"params": variables["params"], "batch_stats": variables["batch_stats"],
             "opt_state": optimizer.init(variables["params"]), "step": jnp.zeros((), jnp.int32)}
    manager = ocp.CheckpointManager(
        (run_dir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=job.keep_checkpoints, enable_async_checkpointing=False))
    _check_resume(run_dir, config)
    resumed_from = manager.latest_step()
    if resumed_from is not None:
        state = manager.restore(resumed_from, args=ocp.args.StandardRestore(state))
        log(f"styleflow: resuming from step {resumed_from}")
    per_epoch = len(train_idx) // job.flow.batch_size
    total = per_epoch * job.flow.epochs
    step_fn = _train_step_fn(fcfg, job.train_solver, optimizer, job.flow.bn_decay)
    metrics_path = run_dir / "metrics.jsonl"
    log(f"styleflow: {len(train_idx)} train / {len(val_idx)} held-out samples, context {', '.join(names)}; "
        f"{total} steps of {job.flow.batch_size} ({job.flow.epochs} epochs), widths {job.flow.hidden_dims}")
    step = int(state["step"])
    params, stats, opt_state = state["params"], state["batch_stats"], state["opt_state"]
    window, t0, t_start = [], time.perf_counter(), time.perf_counter()
    with jax.default_matmul_precision(job.matmul_precision):
        while step < total:
            idx = _batch(train_idx, job.flow.batch_size, step, job.seed)
            params, stats, opt_state, loss, nfe = step_fn(params, stats, opt_state, jnp.asarray(w_NxLxD[idx]),
                                                          jnp.asarray(ctx_NxM[idx]), jax.random.fold_in(keys["noise"], step))
            window.append((loss, nfe))
            step += 1
            if step % job.log_every == 0 or step == total:
                losses, nfes = (np.asarray(v) for v in zip(*jax.device_get(window)))
                if not np.all(np.isfinite(losses)):
                    raise MagecError(f"styleflow: non-finite loss by step {step} (learning rate {job.flow.learning_rate})")
                seconds = time.perf_counter() - t0
                entry = {"kind": "train", "step": step, "epoch": step / per_epoch, "nll": float(losses.mean()),
                         "nfe": float(nfes.mean()), "end_time": float(params["chain.1"]["sqrt_end_time"] ** 2),
                         "seconds_per_step": seconds / len(window)}
                _append(metrics_path, entry)
                log(f"styleflow: step {step}/{total} (epoch {entry['epoch']:.2f}) train NLL {entry['nll']:.2f} "
                    f"nfe {entry['nfe']:.0f} T {entry['end_time']:.3f} {entry['seconds_per_step']:.2f} s/step")
                window, t0 = [], time.perf_counter()
            if step % job.checkpoint_every == 0 or step == total:
                manager.save(step, args=ocp.args.StandardSave(
                    {"params": params, "batch_stats": stats, "opt_state": opt_state,
                     "step": jnp.asarray(step, jnp.int32)}), force=True)
        train_seconds = time.perf_counter() - t_start
        trained = {"params": params, "batch_stats": stats}
        t_eval = time.perf_counter()
        log(f"styleflow: held-out NLL of {len(val_idx)} samples (exact divergence, each its own dopri5 steps)")
        nll_val = heldout_nll(fcfg, trained, w_NxLxD[val_idx], ctx_NxM[val_idx], job.eval_solver, job.flow.eval_batch)
    result = {"kind": "heldout", "step": step, "heldout_nll": float(nll_val.mean()),
              "gaussian_baseline_nll": gaussian_nll(w_NxLxD[train_idx, 0], w_NxLxD[val_idx, 0]),
              "heldout_nll_per_dim": float(nll_val.mean() / fcfg.w_dim),
              "heldout_nll_sem": float(nll_val.std(ddof=1) / math.sqrt(len(nll_val))) if len(nll_val) > 1 else None,
              "num_heldout": len(val_idx), "eval_seconds": time.perf_counter() - t_eval}
    if job.flow.estimate_samples:
        log(f"styleflow: estimating the context of {min(job.flow.estimate_samples, len(val_idx))} held-out samples "
            "by maximum likelihood")
        result["estimate"] = estimate_recovery(
            fcfg, trained, w_NxLxD[val_idx[: job.flow.estimate_samples]], outputs[val_idx[: job.flow.estimate_samples]],
            mean, std, names, job.eval_solver, job.flow.estimate_steps)
        log("styleflow: contexts estimated by maximum likelihood on held-out samples: " + ", ".join(
            f"{n} r={e['pearson_r']:.2f}" for n, e in result["estimate"].items()))
    _append(metrics_path, result)
    log(f"styleflow: held-out NLL {result['heldout_nll']:.2f} nats per sample ({result['heldout_nll_per_dim']:.3f} "
        f"per dimension) on {len(val_idx)} samples, exact divergence; a Gaussian fitted to the training latents "
        f"gives {result['gaussian_baseline_nll']:.2f}")
    editing = {
        "context_names": list(names), "context_mean": mean.tolist(), "context_std": std.tolist(),
        "context_min": outputs[train_idx].min(0).tolist(), "context_max": outputs[train_idx].max(0).tolist(),
        "edit_layers": default_edit_layers(gen_cfg.num_ws, names),
        "context_source": json.loads(json.dumps(label_source(bundle, bundle.descriptor()).spec, default=str)),
    }
    extra = {"editing": editing, "trainer": CONVERTER, "steps": step, "num_train": len(train_idx),
             "heldout_nll": result["heldout_nll"], "heldout_nll_per_dim": result["heldout_nll_per_dim"],
             "gaussian_baseline_nll": result["gaussian_baseline_nll"], "estimate": result.get("estimate"),
             "train_seconds": _logged_seconds(metrics_path, step), "settings": dataclasses.asdict(job.flow)}
    converted = Converted(kind=sf.KIND, config=fcfg.to_dict(), variables=jax.tree.map(np.asarray, jax.device_get(trained)),
                          manifest={"extra": extra})
    save_converted(bundle.path / "styleflow", converted, converter=CONVERTER, overwrite=True)
    update_manifest(bundle.path, styleflow="styleflow")
    log(f"styleflow: saved {bundle.path / 'styleflow'} and named it in the manifest")
    return {**result, "steps": step, "resumed_from": resumed_from, "train_seconds": train_seconds,
            "rendered": samples.rendered, "context_names": list(names)}


def _logged_seconds(path: Path, last_step: int) -> float:
    """Training seconds over every run of this folder, from the logged windows up to ``last_step``."""
    seconds, previous = 0.0, 0
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry["kind"] == "train" and previous < entry["step"] <= last_step:
            seconds += entry["seconds_per_step"] * (entry["step"] - previous)
            previous = entry["step"]
    return seconds


def _append(path: Path, entry: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")


def _check_resume(run_dir: Path, config: ml_collections.ConfigDict) -> None:
    """Refuses to resume another prior (architecture, samples or seed changed); writes ``config.json``."""
    path = run_dir / "config.json"
    now = config.to_dict()
    keys = ("bundle", "seed", "sampling")
    if path.exists() and (run_dir / "checkpoints").exists():
        old = json.loads(path.read_text())
        changed = [k for k in keys if old.get(k) != now.get(k)]
        changed += [f"flow.{k}" for k in ("hidden_dims", "num_blocks", "batch_size", "val_fraction")
                    if old.get("flow", {}).get(k) != now["flow"][k]]
        if changed:
            raise MagecError(f"{run_dir}: {', '.join(changed)} differ from the run being resumed; use another out_dir")
    atomic_write_json(path, now)


def descriptor_context_fn(bundle: Bundle, context_source: dict | None) -> Callable[[np.ndarray], np.ndarray] | None:
    """``images [N, H, W, 3] -> raw contexts [N, M]``: the bundle's F, as the prior's training data saw it, when
    the prior was trained on that F's outputs (``context_source`` is the bundle's label source); else None."""
    descriptor = bundle.descriptor()
    labels = None if descriptor is None else bundle.context_labels(descriptor, context_source)
    if labels is None:
        return None
    apply = jax.jit(labels.apply)

    def contexts(images_NxHxWxC: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(apply(labels.variables, jnp.asarray(images_NxHxWxC[i:i + 8])))
                               for i in range(0, len(images_NxHxWxC), 8)]).astype(np.float64)

    return contexts

"""Generated supervision: latents sampled from G's mapping, rendered by G, labelled by the descriptor F.

Two latent variants share one machinery (:func:`sample_ws`):

  * ``"mixed"`` (LinkNet training, METHOD.md): an INDEPENDENT w per style layer. Sample ``i`` draws
    ``num_ws`` z from ``fold_in(key, i)``, maps each, and takes row 0 of each mapping output, so row ``l``
    of the W+ latent is the w of the l-th z (per-layer style mixing).
  * ``"single"`` (InterFaceGAN boundary fitting, GANSpace): one z per sample, its w broadcast to every layer.

Per-sample keys make sample ``i`` independent of the batch size. Truncation ``w_avg + psi * (w - w_avg)``
uses the bundle's ``w_avg`` (psi = 1 by default: no truncation). Sampling, mapping, synthesis (const noise,
clipped to [-1, 1], as any saved image would be) and labelling are ONE jitted call per batch
(:func:`labeller`); a shard's batches are all dispatched before its results are fetched once.

What is stored is a :class:`LabelSource`'s outputs: F's logits, or for a descriptor whose logits are a
cheap function of threshold-free scores (the faceres+emotion descriptor), those scores, so that F's
thresholds can be calibrated, and changed, without rendering again.

Cache (resumable): ``CACHE/<variant>-<fingerprint>/`` holds ``meta.json`` (the settings, the label source
and the weight digests the fingerprint is made of) and ``shard_<start>.npz`` files (``w``: float32
``[n, num_ws, w_dim]`` for ``mixed`` or ``[n, w_dim]`` for ``single``; ``outputs``: float32 ``[n, M]``), each
written atomically once rendered. A rerun with the same settings and weights loads the finished shards and
renders only the missing ones; other settings get another folder. Weights are identified by a digest of
their arrays (:func:`params_digest`), so a re-converted but identical network keeps its cache.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from magec_jax import images as imio
from magec_jax.errors import MagecError
from magec_jax.models import stylegan2
from magec_jax.models.interfaces import LabelSource

Variant = Literal["mixed", "single"]
VARIANTS = ("mixed", "single")


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    """How supervision samples are drawn and rendered.

    Attributes:
      num_samples: N, samples per variant.
      batch_size: images rendered and labelled per device call.
      shard_size: samples per cache shard (the unit of resumption).
      truncation_psi: 1 (default) samples the full W distribution.
    """

    num_samples: int
    batch_size: int
    shard_size: int
    truncation_psi: float = 1.0


@dataclasses.dataclass(frozen=True)
class Samples:
    """One variant's samples: ``w`` ``[N, num_ws, w_dim]`` (mixed) or ``[N, w_dim]`` (single), ``outputs``
    ``[N, M]`` (the label source's, as cached), ``logits`` ``[N, K]`` (F's); ``rendered`` counts the samples
    rendered by this call (0: all cached)."""

    w: np.ndarray
    outputs: np.ndarray
    logits: np.ndarray
    rendered: int
    cache_dir: Path


def sample_ws(
    cfg: stylegan2.StyleGAN2Config,
    gen_variables: dict,
    key: jax.Array,
    indices_B: jax.Array,
    w_avg_D: jax.Array,
    truncation_psi: float | jax.Array,
    *,
    per_layer: bool,
) -> jax.Array:
    """W+ latents ``[B, num_ws, w_dim]`` of samples ``indices_B``: independent w per layer or one w repeated.

    Args:
      cfg: the generator's architecture (unconditional).
      gen_variables: the generator's variables (only the mapping is used).
      key: the stream's typed key; sample ``i`` uses ``fold_in(key, i)``.
      indices_B: int32 sample indices.
      w_avg_D: the truncation centre.
      truncation_psi: 1 for no truncation.
      per_layer: ``num_ws`` independent z per sample (mixing) instead of one.
    """
    num_z = cfg.num_ws if per_layer else 1
    z_BxNxZ = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (num_z, cfg.z_dim)))(indices_B)
    batch = indices_B.shape[0]
    ws = stylegan2.Generator(cfg).apply(gen_variables, z_BxNxZ.reshape(batch * num_z, cfg.z_dim), method="mapping")
    w_BxNxD = stylegan2.truncate(ws[:, 0].reshape(batch, num_z, cfg.w_dim), w_avg_D, truncation_psi)
    return jnp.broadcast_to(w_BxNxD, (batch, cfg.num_ws, cfg.w_dim))


def render_and_label(
    cfg: stylegan2.StyleGAN2Config,
    descriptor_apply: Callable,
    gen_variables: dict,
    descriptor_variables: dict,
    key: jax.Array,
    indices_B: jax.Array,
    w_avg_D: jax.Array,
    truncation_psi: float | jax.Array,
    *,
    per_layer: bool,
) -> tuple[jax.Array, jax.Array]:
    """Samples ``indices_B`` drawn (:func:`sample_ws`), rendered with const noise, clipped to [-1, 1] and
    labelled: ``(w_BxLxD, outputs_BxK)`` where outputs are ``descriptor_apply(descriptor_variables, images)``."""
    ws_BxLxD = sample_ws(cfg, gen_variables, key, indices_B, w_avg_D, truncation_psi, per_layer=per_layer)
    img_BxHxWxC = stylegan2.Generator(cfg).apply(gen_variables, ws_BxLxD, method="synthesis", noise_mode="const")
    return ws_BxLxD, descriptor_apply(descriptor_variables, jnp.clip(img_BxHxWxC, -1.0, 1.0))


@functools.lru_cache(maxsize=None)
def _sampler(cfg: stylegan2.StyleGAN2Config, per_layer: bool) -> Callable:
    return jax.jit(functools.partial(sample_ws, cfg, per_layer=per_layer))


@functools.lru_cache(maxsize=None)
def labeller(cfg: stylegan2.StyleGAN2Config, descriptor_apply: Callable, per_layer: bool) -> Callable:
    """:func:`render_and_label` jitted as ``(gen_variables, descriptor_variables, key, indices_B, w_avg_D,
    psi) -> (w_BxLxD, outputs_BxK)``: sampling, mapping, synthesis and F in ONE device call per batch, compiled
    once per (architecture, descriptor function, variant, batch size)."""
    return jax.jit(functools.partial(render_and_label, cfg, descriptor_apply, per_layer=per_layer))


def draw(
    cfg: stylegan2.StyleGAN2Config,
    descriptor_apply: Callable,
    gen_variables: dict,
    descriptor_variables: dict,
    *,
    key: jax.Array,
    start: int,
    count: int,
    batch_size: int,
    w_avg_D: np.ndarray,
    truncation_psi: float,
    per_layer: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``start .. start + count - 1`` as host arrays ``(w_NxLxD, outputs_NxK)``, ``batch_size`` per call.

    The last batch is padded with the following indices (discarded), so the labeller compiles once; every
    batch is dispatched before the results are fetched, once, at the end.
    """
    fn = labeller(cfg, descriptor_apply, per_layer)
    w_avg, psi = jnp.asarray(w_avg_D), jnp.float32(truncation_psi)
    parts = [fn(gen_variables, descriptor_variables, key, jnp.arange(b, b + batch_size, dtype=jnp.int32), w_avg, psi)
             for b in range(start, start + count, batch_size)]
    ws, outputs = jax.device_get((jnp.concatenate([p[0] for p in parts]), jnp.concatenate([p[1] for p in parts])))
    return np.asarray(ws[:count], np.float32), np.asarray(outputs[:count], np.float32)


def fingerprint(variant: Variant, settings: SampleSettings, seed: int, weights: dict[str, str],
                labels: LabelSource) -> dict:
    """Everything a variant's samples depend on (``weights``: part name -> :func:`params_digest`)."""
    return dict(variant=variant, seed=seed, num_samples=settings.num_samples, shard_size=settings.shard_size,
                truncation_psi=settings.truncation_psi, weights=weights, labels=labels.spec)


def params_digest(path: Path) -> str:
    """sha256 of a ``params.npz``'s arrays (names, dtypes, shapes and bytes, in name order), independent of the
    zip container's timestamps."""
    digest = hashlib.sha256()
    with np.load(path, allow_pickle=False) as z:
        for name in sorted(z.files):
            array = np.ascontiguousarray(z[name])
            digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def weight_hashes(bundle_path: Path, manifest: dict) -> dict[str, str]:
    """:func:`params_digest` of the generator's and the descriptor's parameter files."""
    parts = {"generator": manifest["generator"]}
    parts.update({k: manifest["descriptor"][k] for k in ("path", "faceres", "emotion") if k in manifest["descriptor"]})
    return {name: params_digest(bundle_path / rel / "params.npz") for name, rel in parts.items()}


def load_or_render(
    variant: Variant,
    settings: SampleSettings,
    *,
    cfg: stylegan2.StyleGAN2Config,
    gen_variables: dict,
    labels: LabelSource,
    w_avg_D: np.ndarray,
    key: jax.Array,
    cache_root: Path,
    cache_key: dict,
    log: Callable[[str], None],
) -> Samples:
    """A variant's N samples, from the cache where rendered before, else rendered shard by shard.

    Shards are drawn by :func:`draw` and written atomically as each finishes.

    Args:
      variant: ``"mixed"`` or ``"single"``.
      settings: N, batch and shard sizes, truncation.
      cfg, gen_variables: the generator.
      labels: what is stored per sample (F's logits or its scores) and how it becomes F's logits.
      w_avg_D: the truncation centre.
      key: the variant's stream key.
      cache_root: the cache folder (one subfolder per variant and ``cache_key``).
      cache_key: :func:`fingerprint` of the settings and weights.
      log: receives one progress line per rendered shard.
    """
    digest = hashlib.sha256(json.dumps(cache_key, sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = cache_root / f"{variant}-{digest}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    imio.atomic_write_json(cache_dir / "meta.json", cache_key)
    n, size = settings.num_samples, settings.shard_size
    rendered, t0 = 0, time.perf_counter()
    ws_parts, output_parts = [], []
    for start in range(0, n, size):
        count = min(size, n - start)
        path = cache_dir / f"shard_{start:08d}.npz"
        shard = _read_shard(path, count)
        if shard is None:
            w_host, outputs_host = draw(
                cfg, labels.apply, gen_variables, labels.variables, key=key, start=start, count=count,
                batch_size=settings.batch_size, w_avg_D=w_avg_D, truncation_psi=settings.truncation_psi,
                per_layer=variant == "mixed",
            )
            bad = int(np.sum(~np.all(np.isfinite(outputs_host), axis=1)))
            if bad:
                raise MagecError(f"{labels.name}: non-finite outputs on {bad} generated {variant} sample(s) "
                                 f"in {start}..{start + count - 1}")
            shard = dict(w=w_host if variant == "mixed" else w_host[:, 0], outputs=outputs_host)
            imio.atomic_save_npz(path, **shard)
            rendered += count
            rate = rendered / (time.perf_counter() - t0)
            log(f"samples ({variant}): {start + count}/{n} ready, {rendered} rendered this run ({rate:.1f}/s)")
        ws_parts.append(shard["w"])
        output_parts.append(shard["outputs"])
    if not rendered:
        log(f"samples ({variant}): all {n} loaded from {cache_dir}")
    outputs = np.concatenate(output_parts)
    return Samples(w=np.concatenate(ws_parts), outputs=outputs, logits=np.asarray(labels.to_logits(outputs), np.float32),
                   rendered=rendered, cache_dir=cache_dir)


def _read_shard(path: Path, count: int) -> dict[str, np.ndarray] | None:
    """A finished shard, or None when it is missing, unreadable or of the wrong length (rendered again)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            shard = {k: z[k] for k in ("w", "outputs")}
    except (OSError, ValueError, KeyError):
        return None
    return shard if len(shard["w"]) == count == len(shard["outputs"]) else None


def mapped_ws(
    cfg: stylegan2.StyleGAN2Config,
    gen_variables: dict,
    key: jax.Array,
    *,
    num_samples: int,
    batch_size: int,
    w_avg_D: np.ndarray,
    truncation_psi: float,
) -> np.ndarray:
    """``[N, w_dim]`` mapped w (no rendering; the single-w sampler), e.g. for a GANSpace PCA."""
    sampler = _sampler(cfg, False)
    chunks = [
        sampler(gen_variables, key, jnp.arange(b, b + batch_size, dtype=jnp.int32), jnp.asarray(w_avg_D),
                jnp.float32(truncation_psi))[:, 0]
        for b in range(0, num_samples, batch_size)
    ]
    return np.asarray(jax.device_get(jnp.concatenate(chunks)[:num_samples]), np.float32)

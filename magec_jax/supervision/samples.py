"""Generated supervision: latents sampled from G's mapping, rendered by G, labelled by the descriptor F.

Two latent variants share one machinery (:func:`sample_ws`):

  * ``"mixed"`` (LinkNet training, METHOD.md): an INDEPENDENT w per style layer. Sample ``i`` draws
    ``num_ws`` z from ``fold_in(key, i)``, maps each, and takes row 0 of each mapping output, so row ``l``
    of the W+ latent is the w of the l-th z (per-layer style mixing).
  * ``"single"`` (InterFaceGAN boundary fitting, GANSpace): one z per sample, its w broadcast to every layer.

Per-sample keys make sample ``i`` independent of the batch size. Truncation ``w_avg + psi * (w - w_avg)``
uses the bundle's ``w_avg`` (psi = 1 by default: no truncation). Images are rendered with const noise,
clipped to [-1, 1] (as any saved image would be) and labelled with F's raw logits.

Cache (resumable): ``CACHE/<variant>-<fingerprint>/`` holds ``meta.json`` (the settings and weight hashes
the fingerprint is made of) and ``shard_<start>.npz`` files (``w``: float32 ``[n, num_ws, w_dim]`` for
``mixed`` or ``[n, w_dim]`` for ``single``; ``logits``: float32 ``[n, K]``), each written atomically once
rendered. A rerun with the same settings and weights loads the finished shards and renders only the missing
ones; other settings get another folder.
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
from magec_jax.models.interfaces import Descriptor
from magec_jax.weights import sha256_file

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
    """One variant's samples: ``w`` ``[N, num_ws, w_dim]`` (mixed) or ``[N, w_dim]`` (single), ``logits``
    ``[N, K]`` (F's raw outputs); ``rendered`` counts the samples rendered by this call (0: all cached)."""

    w: np.ndarray
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


@functools.lru_cache(maxsize=None)
def _sampler(cfg: stylegan2.StyleGAN2Config, per_layer: bool) -> Callable:
    return jax.jit(functools.partial(sample_ws, cfg, per_layer=per_layer))


@functools.lru_cache(maxsize=None)
def _labeller(cfg: stylegan2.StyleGAN2Config, descriptor_apply: Callable) -> Callable:
    """Jitted ``(gen_variables, descriptor_variables, ws_BxLxD) -> logits_BxK`` (const noise); one per
    (architecture, descriptor function), so both variants share one compilation."""
    model = stylegan2.Generator(cfg)

    def label(gen_variables, descriptor_variables, ws_BxLxD):
        img_BxHxWxC = model.apply(gen_variables, ws_BxLxD, method="synthesis", noise_mode="const")
        return descriptor_apply(descriptor_variables, jnp.clip(img_BxHxWxC, -1.0, 1.0))

    return jax.jit(label)


def fingerprint(variant: Variant, settings: SampleSettings, seed: int, weights: dict[str, str]) -> dict:
    """Everything a variant's samples depend on (``weights``: part name -> sha256 of its parameters)."""
    return dict(variant=variant, seed=seed, num_samples=settings.num_samples, shard_size=settings.shard_size,
                truncation_psi=settings.truncation_psi, weights=weights)


def weight_hashes(bundle_path: Path, manifest: dict) -> dict[str, str]:
    """sha256 of the generator's and descriptor's parameter files, and the descriptor's settings."""
    parts = {"generator": manifest["generator"]}
    desc = manifest["descriptor"]
    parts.update({k: desc[k] for k in ("path", "faceres", "emotion") if k in desc})
    hashes = {name: sha256_file(bundle_path / rel / "params.npz") for name, rel in parts.items()}
    hashes["descriptor_spec"] = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()
    return hashes


def load_or_render(
    variant: Variant,
    settings: SampleSettings,
    *,
    cfg: stylegan2.StyleGAN2Config,
    gen_variables: dict,
    descriptor: Descriptor,
    w_avg_D: np.ndarray,
    key: jax.Array,
    cache_root: Path,
    cache_key: dict,
    log: Callable[[str], None],
) -> Samples:
    """A variant's N samples, from the cache where rendered before, else rendered shard by shard.

    Shards are rendered in batches of ``settings.batch_size`` (the last batch padded, so the labeller compiles
    once) and written atomically as each finishes; results are fetched from the device once per shard.

    Args:
      variant: ``"mixed"`` or ``"single"``.
      settings: N, batch and shard sizes, truncation.
      cfg, gen_variables: the generator.
      descriptor: F; its raw logits are stored.
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
    n, size, batch = settings.num_samples, settings.shard_size, settings.batch_size
    sampler = _sampler(cfg, variant == "mixed")
    labeller = _labeller(cfg, descriptor.apply)
    w_avg = jnp.asarray(w_avg_D)
    psi = jnp.float32(settings.truncation_psi)
    ws_parts, logit_parts, rendered, t0 = [], [], 0, time.perf_counter()
    for start in range(0, n, size):
        count = min(size, n - start)
        path = cache_dir / f"shard_{start:08d}.npz"
        shard = _read_shard(path, count)
        if shard is None:
            w_chunks, logit_chunks = [], []
            for b in range(start, start + count, batch):
                indices = jnp.arange(b, b + batch, dtype=jnp.int32)  # rows past the shard are discarded
                ws_BxLxD = sampler(gen_variables, key, indices, w_avg, psi)
                logit_chunks.append(labeller(gen_variables, descriptor.variables, ws_BxLxD))
                w_chunks.append(ws_BxLxD if variant == "mixed" else ws_BxLxD[:, 0])
            w_host, logits_host = jax.device_get(
                (jnp.concatenate(w_chunks)[:count], jnp.concatenate(logit_chunks)[:count])
            )
            bad = int(np.sum(~np.all(np.isfinite(logits_host), axis=1)))
            if bad:
                raise MagecError(f"{descriptor.name}: non-finite outputs on {bad} generated {variant} sample(s) "
                                 f"in {start}..{start + count - 1}")
            shard = dict(w=np.asarray(w_host, np.float32), logits=np.asarray(logits_host, np.float32))
            imio.atomic_save_npz(path, **shard)
            rendered += count
            rate = rendered / (time.perf_counter() - t0)
            log(f"samples ({variant}): {start + count}/{n} ready, {rendered} rendered this run ({rate:.1f}/s)")
        ws_parts.append(shard["w"])
        logit_parts.append(shard["logits"])
    if not rendered:
        log(f"samples ({variant}): all {n} loaded from {cache_dir}")
    return Samples(w=np.concatenate(ws_parts), logits=np.concatenate(logit_parts), rendered=rendered,
                   cache_dir=cache_dir)


def _read_shard(path: Path, count: int) -> dict[str, np.ndarray] | None:
    """A finished shard, or None when it is missing, unreadable or of the wrong length (rendered again)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            shard = {k: z[k] for k in ("w", "logits")}
    except (OSError, ValueError, KeyError):
        return None
    return shard if len(shard["w"]) == count == len(shard["logits"]) else None


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

"""Generate images with a converted StyleGAN2 generator.

    python -m magec_jax.generate --generator DST --seeds 0-7 --truncation-psi 0.7 --out grid.png
    python -m magec_jax.generate --generator DST --z-file Z.npy --out-npy images.npy
    python -m magec_jax.generate --generator DST --w-file W.npy --noise-mode none --out grid.png

Latents come from exactly one of:

* ``--seeds 0-7,12``: z = ``np.random.RandomState(seed).randn(1, z_dim)``, as NVIDIA's ``gen_images.py`` draws
  them, so a seed gives the same image as NVIDIA's code with the same (converted) network;
* ``--z-file Z.npy``: float32 ``[B, z_dim]``;
* ``--w-file W.npy``: ``[B, w_dim]`` or W+ ``[B, num_ws, w_dim]``, fed to the synthesis network (truncation,
  when asked for, is applied to every row, towards ``w_avg``); or an ``.npz`` whose key ``w`` holds such an
  array, as ``python -m magec_jax.invert`` and ``python -m magec_jax.edit`` write (``w`` ``[1, num_ws, w_dim]``).

``--out`` writes a PNG grid, ``ceil(sqrt(B))`` images wide, with no gaps (pixels rounded as NVIDIA does, by
:func:`magec_jax.images.to_uint8`); ``--out-npy`` writes the
raw float32 images ``[B, H, W, C]`` (about [-1, 1], not clamped). ``--noise-mode random`` draws the noise
from ``--noise-seed``. Class-conditional networks need ``--class``. ``--delta FILE`` renders with a generator
tuned by pivotal tuning (``python -m magec_jax.invert`` with ``config.pti``: ``pti/<name>.npz``), e.g. the
tuned reconstruction of an image: ``--w-file out/<name>.npz --delta out/pti/<name>.npz``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from magec_jax import images as imio
from magec_jax.cli import DefaultsHelpFormatter, error_status
from magec_jax.errors import FileFormatError, MagecError
from magec_jax.models.deltas import tuned_variables
from magec_jax.models.stylegan2 import (
    Generator, StyleGAN2Config, config_from_dict, load_generator, seed_latents, truncate,
)
from magec_jax.weights import read_manifest


def parse_seeds(text: str) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]``."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            seeds.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise MagecError(f"--seeds {text!r}: expected a list like 0-7,12") from None
    if not seeds:
        raise MagecError(f"--seeds {text!r}: no seeds")
    return seeds


def load_latents(path: str | os.PathLike, shapes: list[tuple[int, ...]], what: str, key: str) -> np.ndarray:
    """Reads a float ``.npy``, or the array ``key`` of an ``.npz``, whose shape is one of ``shapes`` (``-1`` =
    any batch size)."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if key not in loaded.files:
                    raise FileFormatError(path, f"no array {key!r} in this .npz (found {', '.join(loaded.files)})")
                loaded = loaded[key]
        arr = np.asarray(loaded)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise FileFormatError(path, f"unreadable .npy/.npz ({e})") from None
    ok = any(arr.ndim == len(s) and all(e in (-1, n) for e, n in zip(s, arr.shape)) for s in shapes)
    if not ok or arr.dtype.kind != "f" or arr.shape[0] == 0:
        expected = " or ".join("[" + ", ".join("B" if n == -1 else str(n) for n in s) + "]" for s in shapes)
        raise FileFormatError(path, f"{what} has shape {list(arr.shape)} ({arr.dtype}), expected float {expected}")
    if not np.isfinite(arr).all():
        raise FileFormatError(path, f"{what} contains NaN or Inf")
    return arr.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _synthesis_fn(cfg: StyleGAN2Config, noise_mode: str, fused_modconv: bool):
    """Jitted ``(variables, ws, psi, key) -> images``; truncation by hand so W and z paths share it."""
    G = Generator(cfg, fused_modconv=fused_modconv)

    def synth(variables, ws, psi, key):
        ws = truncate(ws, variables["buffers"]["mapping"]["w_avg"], psi)
        return G.apply(variables, ws, method="synthesis", noise_mode=noise_mode, key=key)

    return jax.jit(synth)


def run(
    generator: str | os.PathLike,
    *,
    z: np.ndarray | None = None,
    ws: np.ndarray | None = None,
    class_idx: int | None = None,
    truncation_psi: float = 1.0,
    truncation_cutoff: int | None = None,
    noise_mode: str = "const",
    noise_seed: int = 0,
    batch_size: int = 8,
    fused_modconv: bool = False,
    out: str | os.PathLike | None = None,
    out_npy: str | os.PathLike | None = None,
    delta: str | os.PathLike | None = None,
) -> np.ndarray:
    """Renders ``z`` ``[B, z_dim]`` or ``ws`` (``[B, w_dim]`` / ``[B, num_ws, w_dim]``); returns ``[B, H, W, C]``.

    Batches of ``batch_size`` (the last one padded) run through one compiled function. Writes a PNG grid to
    ``out`` and/or the raw float32 images to ``out_npy``, atomically. ``delta``: a pivotal-tuning weight delta
    (``magec_jax.models.deltas``) applied to the synthesis network; one for another generator is refused in one
    line naming both.
    """
    cfg, variables = load_generator(generator)
    if delta is not None:
        variables = tuned_variables(variables, delta, str(generator))
    if (z is None) == (ws is None):
        raise MagecError("give exactly one of z and ws")
    if cfg.c_dim and class_idx is None and z is not None:
        raise MagecError(f"{generator}: the generator is class-conditional (c_dim={cfg.c_dim}); pass --class")
    if not cfg.c_dim and class_idx is not None:
        raise MagecError(f"{generator}: --class given but the generator is unconditional")
    if class_idx is not None and not 0 <= class_idx < cfg.c_dim:
        raise MagecError(f"--class {class_idx} out of range [0, {cfg.c_dim})")
    G = Generator(cfg)
    if z is not None:
        c = None
        if cfg.c_dim:
            c = jnp.zeros((z.shape[0], cfg.c_dim), jnp.float32).at[:, class_idx].set(1.0)
        ws = G.apply(variables, jnp.asarray(z), c, method="mapping")
    ws = jnp.asarray(ws, jnp.float32)
    if ws.ndim == 2:
        ws = jnp.broadcast_to(ws[:, None], (ws.shape[0], cfg.num_ws, cfg.w_dim))
    if truncation_cutoff is not None:
        psi = jnp.where(jnp.arange(cfg.num_ws) < truncation_cutoff, truncation_psi, 1.0)[None, :, None]
    else:
        psi = jnp.full((1, 1, 1), truncation_psi, jnp.float32)
    synth = _synthesis_fn(cfg, noise_mode, fused_modconv)
    key = jax.random.key(noise_seed)
    n = ws.shape[0]
    chunks = []
    for start in range(0, n, batch_size):
        batch = ws[start : start + batch_size]
        pad = batch_size - batch.shape[0] if n > batch_size else 0
        batch = jnp.pad(batch, ((0, pad), (0, 0), (0, 0)))
        img = synth(variables, batch, psi, jax.random.fold_in(key, start))
        chunks.append(np.asarray(img[: batch.shape[0] - pad]))
    images = np.concatenate(chunks)
    if out_npy is not None:
        imio.atomic_save_npy(out_npy, images)
    if out is not None:
        columns = int(np.ceil(np.sqrt(len(images))))
        imio.atomic_write_bytes(out, imio.png_bytes(imio.grid(images, columns=columns, pad=0)))
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magec_jax.generate", description=__doc__.split("\n\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--generator", required=True, type=Path, help="converted StyleGAN2 directory")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--seeds", help="e.g. 0-7,12 (z as NVIDIA draws it)")
    src.add_argument("--z-file", type=Path, help="float32 [B, z_dim] .npy (or .npz with key z)")
    src.add_argument("--w-file", type=Path, help="[B, w_dim] or [B, num_ws, w_dim] .npy, or an .npz with key w "
                     "(the latents invert and edit write)")
    parser.add_argument("--truncation-psi", type=float, default=1.0, help="truncation towards w_avg (1: none)")
    parser.add_argument("--truncation-cutoff", type=int, default=None, help="truncate only the first N rows of W+")
    parser.add_argument("--noise-mode", choices=("const", "random", "none"), default="const", help="noise inputs")
    parser.add_argument("--noise-seed", type=int, default=0, help="seed of --noise-mode random")
    parser.add_argument("--class", dest="class_idx", type=int, default=None, help="class index (conditional nets)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per compiled call")
    parser.add_argument("--fused-modconv", action="store_true", help="NVIDIA's grouped-conv modulation")
    parser.add_argument("--delta", type=Path, default=None, help="a pivotal-tuning weight delta (the inversion "
                        "job's pti/<name>.npz) applied to the synthesis network")
    parser.add_argument("--out", type=Path, help="PNG grid")
    parser.add_argument("--out-npy", type=Path, help="raw float32 images [B, H, W, C]")
    args = parser.parse_args(argv)
    if args.out is None and args.out_npy is None:
        parser.error("give --out and/or --out-npy")
    try:
        cfg = config_from_dict(read_manifest(args.generator)["config"])
        z = ws = None
        if args.seeds is not None:
            z = seed_latents(parse_seeds(args.seeds), cfg.z_dim)
        elif args.z_file is not None:
            z = load_latents(args.z_file, [(-1, cfg.z_dim)], "z", "z")
        else:
            ws = load_latents(args.w_file, [(-1, cfg.w_dim), (-1, cfg.num_ws, cfg.w_dim)], "W", "w")
        images = run(
            args.generator,
            z=z,
            ws=ws,
            class_idx=args.class_idx,
            truncation_psi=args.truncation_psi,
            truncation_cutoff=args.truncation_cutoff,
            noise_mode=args.noise_mode,
            noise_seed=args.noise_seed,
            batch_size=args.batch_size,
            fused_modconv=args.fused_modconv,
            out=args.out,
            out_npy=args.out_npy,
            delta=args.delta,
        )
    except MagecError as e:
        return error_status(e)
    count = f"{images.shape[0]} image{'s' if images.shape[0] != 1 else ''}"
    print(f"{count} {images.shape[1]}x{images.shape[2]} -> {' and '.join(str(p) for p in (args.out, args.out_npy) if p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

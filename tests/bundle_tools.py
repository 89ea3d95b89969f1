"""Builds small but real model bundles for end-to-end tests: a random tiny StyleGAN2 (real architecture),
the real LPIPS weights, and the real offline face models (faceres identity, faceres+emotion descriptor)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from conftest import require_shared
from magec_jax.bundle import build_bundle, update_manifest
from magec_jax.models import stylegan2
from magec_jax.models.face_attributes import ATTRIBUTE_NAMES
from magec_jax.models.linknet import LinkNet, LinkNetConfig
from magec_jax.weights import Converted, save_converted

TINY = stylegan2.StyleGAN2Config(
    z_dim=32, w_dim=32, img_resolution=32, mapping_layers=2, channel_base=512, channel_max=32
)


def tiny_generator(dst: Path, seed: int = 0) -> Path:
    variables = jax.tree.map(np.asarray, stylegan2.init_generator(TINY, jax.random.key(seed)))
    return save_converted(dst, Converted(kind="stylegan2", config=TINY.to_dict(), variables=variables))


def face_models(dst: Path) -> tuple[Path, Path]:
    from ports.tfjs import convert_emotion, convert_faceres

    models = require_shared("data", "face_models")
    faceres = save_converted(dst / "faceres", convert_faceres(models / "faceres.json"))
    emotion = save_converted(dst / "emotion", convert_emotion(models / "emotion.json"))
    return faceres, emotion


def tiny_bundle(root: Path, seed: int = 0) -> Path:
    """A complete MAGEC bundle at 32x32 (random LinkNet and random unit directions)."""
    gen = tiny_generator(root / "parts" / "generator", seed)
    faceres, emotion = face_models(root / "parts")
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((len(ATTRIBUTE_NAMES), TINY.w_dim)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    bundle = build_bundle(
        root / "bundle",
        generator=gen,
        identity=("faceres", faceres),
        descriptor=dict(kind="face_attributes", faceres=faceres, emotion=emotion),
        directions=dict(zip(ATTRIBUTE_NAMES, dirs, strict=True)),
        w_avg_samples=1000,
    )
    cfg = LinkNetConfig(num_ws=TINY.num_ws, w_dim=TINY.w_dim, num_outputs=len(ATTRIBUTE_NAMES))
    linknet = LinkNet(cfg).init(jax.random.key(seed), jnp.zeros((TINY.num_ws, TINY.w_dim)))
    save_converted(bundle.path / "linknet", Converted(kind="linknet", config=cfg.to_dict(),
                                                      variables=jax.tree.map(np.asarray, linknet)))
    update_manifest(bundle.path, linknet="linknet")
    return bundle.path

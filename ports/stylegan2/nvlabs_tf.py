"""NVlabs/stylegan2 TensorFlow pickles ``(G, D, Gs)``: generators (``Gs`` by default, or ``G``) and ``D``.

The architecture comes from the pickled ``static_kwargs``, with the defaults and renames of NVIDIA's
``legacy.py`` (``channel_base = 2 * fmap_base``, ...). TF kernels are HWIO already; only the up-sampling
convolution's kernel is flipped (TF's transposed convolution) and the modulation bias is stored minus one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np

from magec_jax.errors import FileFormatError
from magec_jax.models import discriminator as disc
from magec_jax.models import stylegan2 as sg2
from magec_jax.weights import Converted
from ports.nvidia import load_tf_pkl
from ports.stylegan2 import common
from ports.tables import Rule, apply_table, scalar

_GENERATOR_KWARGS = {
    "latent_size", "label_size", "dlatent_size", "resolution", "num_channels", "mapping_layers", "label_fmaps",
    "mapping_fmaps", "mapping_nonlinearity", "mapping_lrmul", "w_avg_beta", "fmap_base", "fmap_max",
    "num_fp16_res", "conv_clamp", "architecture", "resample_kernel", "use_noise", "nonlinearity",
    "truncation_psi", "truncation_cutoff", "style_mixing_prob", "structure", "conditioning", "fused_modconv",
    "dlatent_broadcast",
}  # fmt: skip
_DISCRIMINATOR_KWARGS = {
    "num_channels", "resolution", "label_size", "fmap_base", "fmap_max", "mbstd_group_size", "mbstd_num_features",
    "architecture", "nonlinearity", "resample_kernel", "num_fp16_res", "conv_clamp", "mapping_layers",
    "mapping_fmaps", "mapping_lrmul", "freeze_layers", "structure",
}  # fmt: skip


def _noise_target(match: re.Match) -> str:
    """``synthesis/noise{k}``: k=0 -> b4/conv1; k=2*log2(R)-5 -> bR/conv0; k=2*log2(R)-4 -> bR/conv1."""
    k = int(match[1])
    if k == 0:
        return "buffers/synthesis/b4/conv1/noise_const"
    log2_res, conv = ((k + 5) // 2, "conv0") if k % 2 else ((k + 4) // 2, "conv1")
    return f"buffers/synthesis/b{2**log2_res}/{conv}/noise_const"


def _layer(leaf: str) -> Callable[[re.Match], str]:
    """The target of ``synthesis/{R}x{R}/{layer}/...``: TF's 4x4 ``Conv`` is the port's ``b4/conv1``."""
    names = {"Conv": "conv1", "Conv0_up": "conv0", "Conv1": "conv1", "ToRGB": "torgb"}
    return lambda m: f"params/synthesis/b{m[1]}/{names[m[2]]}/{leaf}"


_RES = r"synthesis/(\d+)x\d+/"
_LAYER = r"(Conv|Conv0_up|Conv1|ToRGB)"
# Source names are the component's key and the variable's name: 'mapping/Dense0/weight', 'synthesis/...'.
GENERATOR_RULES = (
    Rule(r"lod", None),  # progressive-growing level of detail: unused by StyleGAN2
    Rule(r"dlatent_avg", "buffers/mapping/w_avg"),
    Rule(r"mapping/Dense(\d+)/(weight|bias)", r"params/mapping/fc\1/\2"),
    Rule(r"mapping/LabelEmbed/(weight|bias)", r"params/mapping/embed/\1"),
    Rule(r"synthesis/noise(\d+)", _noise_target, lambda a: a[0, 0]),
    Rule(_RES + r"Const/const", r"params/synthesis/b\1/const", lambda a: a[0].transpose(1, 2, 0)),
    Rule(_RES + r"(Conv0_up)/weight", _layer("weight"), lambda a: a[::-1, ::-1]),  # TF's up-conv is flipped
    Rule(_RES + r"(Conv|Conv1|ToRGB)/weight", _layer("weight")),
    Rule(_RES + _LAYER + r"/bias", _layer("bias")),
    Rule(_RES + _LAYER + r"/mod_weight", _layer("affine/weight")),
    Rule(_RES + _LAYER + r"/mod_bias", _layer("affine/bias"), lambda a: a + 1),
    Rule(_RES + _LAYER + r"/noise_strength", _layer("noise_strength"), scalar),
)


def _block(leaf: str) -> Callable[[re.Match], str]:
    names = {"FromRGB": "fromrgb", "Conv0": "conv0", "Conv1_down": "conv1", "Skip": "skip", "Conv": "conv"}
    return lambda m: f"params/b{m[1]}/{names[m[2]]}/{leaf}"


# ``D_stylegan2`` ('resnet'); no flips: its down-sampling convolutions are plain convolutions.
DISCRIMINATOR_RULES = (
    Rule(r"(\d+)x\d+/(FromRGB|Conv0|Conv1_down|Skip|Conv)/weight", _block("weight")),
    Rule(r"(\d+)x\d+/(FromRGB|Conv0|Conv1_down|Conv)/bias", _block("bias")),
    Rule(r"4x4/Dense0/(weight|bias)", r"params/b4/fc/\1"),
    Rule(r"Output/(weight|bias)", r"params/b4/out/\1"),
)


def _generator_config(kw: Mapping[str, Any], path: Path) -> sg2.StyleGAN2Config:
    common.check_known(kw, _GENERATOR_KWARGS, "TF generator kwargs", path)
    common.check_defaults(
        kw,
        {
            "architecture": "skip",
            "resample_kernel": [1, 3, 3, 1],
            "use_noise": True,
            "nonlinearity": "lrelu",
            "mapping_nonlinearity": "lrelu",
            "structure": "fixed",
            "conditioning": None,
        },
        "TF kwarg",
        path,
    )
    return common.generator_config(
        path,
        z_dim=int(kw.get("latent_size", 512)),
        c_dim=int(kw.get("label_size", 0)),
        w_dim=int(kw.get("dlatent_size", 512)),
        img_resolution=int(kw.get("resolution", 1024)),
        img_channels=int(kw.get("num_channels", 3)),
        mapping_layers=int(kw.get("mapping_layers", 8)),
        mapping_lr_multiplier=float(kw.get("mapping_lrmul", 0.01)),
        layer_features=kw.get("mapping_fmaps"),
        embed_features=kw.get("label_fmaps"),
        channel_base=2 * int(kw.get("fmap_base", 16384)),
        channel_max=int(kw.get("fmap_max", 512)),
        conv_clamp=common.opt_float(kw.get("conv_clamp")),
        num_fp16_res=int(kw.get("num_fp16_res", 0)),
    )


def _discriminator_config(kw: Mapping[str, Any], path: Path) -> disc.DiscriminatorConfig:
    """``D_stylegan2`` kwargs -> config, with the defaults of ``legacy.convert_tf_discriminator``."""
    common.check_known(kw, _DISCRIMINATOR_KWARGS, "TF discriminator kwargs", path)
    common.check_defaults(kw, {"label_size": 0, "architecture": "resnet", "nonlinearity": "lrelu",
                               "resample_kernel": [1, 3, 3, 1], "freeze_layers": 0}, "TF discriminator", path)  # fmt: skip
    return common.discriminator_config(
        path,
        img_resolution=int(kw.get("resolution", 1024)),
        img_channels=int(kw.get("num_channels", 3)),
        channel_base=2 * int(kw.get("fmap_base", 16384)),
        channel_max=int(kw.get("fmap_max", 512)),
        mbstd_group_size=kw.get("mbstd_group_size"),
        mbstd_num_channels=int(kw.get("mbstd_num_features", 1)),
        conv_clamp=common.opt_float(kw.get("conv_clamp")),
    )


def convert_tf_pkl(path: str | os.PathLike, *, network: str | None = None) -> Converted:
    """Converts an NVlabs/stylegan2 TensorFlow pickle (``Gs`` by default, or ``network='G'`` / ``'D'``)."""
    path = Path(path)
    nets = load_tf_pkl(path)
    name, net = common.pick(nets, network, "Gs", {"g_ema": "Gs", "gs": "Gs", "g": "G", "d": "D"}, path)
    if name == "D":
        cfg = _discriminator_config(net.static_kwargs, path)
        flat = apply_table(DISCRIMINATOR_RULES, [(path, net.variables)], common.discriminator_leaves(cfg),
                           what="a TF StyleGAN2 discriminator")
        return common.converted(cfg, flat, kind=disc.KIND, network=name, static_kwargs=net.static_kwargs)
    if set(net.components) != {"mapping", "synthesis"}:
        raise FileFormatError(path, f"{name} has components {sorted(net.components)}, not mapping + synthesis")
    cfg = _generator_config(net.static_kwargs, path)
    variables: dict[str, np.ndarray] = dict(net.variables)
    for key, component in net.components.items():
        variables.update((f"{key}/{var}", value) for var, value in component.variables.items())
    flat = apply_table(GENERATOR_RULES, [(path, variables)], common.generator_leaves(cfg),
                       what="a TF StyleGAN2 generator")
    return common.converted(cfg, flat, network=name, static_kwargs=net.static_kwargs)

"""stylegan2-ada-pytorch: network pickles (``G_ema``, ``G``, ``D``) and plain generator state dicts.

The pickle's ``init_kwargs`` give the architecture; a state dict's is inferred from tensor shapes, and what
shapes cannot tell (the mapping lr multiplier, ``conv_clamp``, fp16 layers) takes NVIDIA's defaults, recorded
under ``manifest['extra']['assumed']``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from magec_jax.errors import FileFormatError
from magec_jax.models import discriminator as disc
from magec_jax.models import stylegan2 as sg2
from magec_jax.weights import Converted
from ports.nvidia import PersistentModule, load_nvidia_pkl
from ports.stylegan2 import common
from ports.tables import Rule, apply_table, linear_to_dense, oihw_to_hwio, scalar
from ports.torch_files import load_torch


def _chw_to_hwc(a: np.ndarray) -> np.ndarray:
    return a.transpose(1, 2, 0)


_SYN = r"synthesis\.b(\d+)\."
GENERATOR_RULES = (
    Rule(r"mapping\.fc(\d+)\.weight", r"params/mapping/fc\1/weight", linear_to_dense),
    Rule(r"mapping\.fc(\d+)\.bias", r"params/mapping/fc\1/bias"),
    Rule(r"mapping\.embed\.weight", "params/mapping/embed/weight", linear_to_dense),
    Rule(r"mapping\.embed\.bias", "params/mapping/embed/bias"),
    Rule(r"mapping\.w_avg", "buffers/mapping/w_avg"),
    Rule(_SYN + r"const", r"params/synthesis/b\1/const", _chw_to_hwc),
    Rule(_SYN + r"(conv[01]|torgb)\.weight", r"params/synthesis/b\1/\2/weight", oihw_to_hwio),
    Rule(_SYN + r"(conv[01]|torgb)\.bias", r"params/synthesis/b\1/\2/bias"),
    # The modulation is a dense layer [I, w_dim] -> [w_dim, I].
    Rule(_SYN + r"(conv[01]|torgb)\.affine\.weight", r"params/synthesis/b\1/\2/affine/weight", linear_to_dense),
    Rule(_SYN + r"(conv[01]|torgb)\.affine\.bias", r"params/synthesis/b\1/\2/affine/bias"),
    Rule(_SYN + r"(conv[01])\.noise_strength", r"params/synthesis/b\1/\2/noise_strength", scalar),
    Rule(_SYN + r"(conv[01])\.noise_const", r"buffers/synthesis/b\1/\2/noise_const"),
    Rule(_SYN + r"(?:(?:conv[01]|torgb)\.)?resample_filter", None, common.standard_filter()),
)

# The 'resnet' discriminator, unconditional.
_BLOCK = r"b(\d+)\."
DISCRIMINATOR_RULES = (
    Rule(_BLOCK + r"(fromrgb|conv0|conv1|skip|conv)\.weight", r"params/b\1/\2/weight", oihw_to_hwio),
    Rule(_BLOCK + r"(fromrgb|conv0|conv1|conv)\.bias", r"params/b\1/\2/bias"),
    # fc's rows stay in NCHW flatten order: the port flattens as NVIDIA does.
    Rule(r"b4\.(fc|out)\.weight", r"params/b4/\1/weight", linear_to_dense),
    Rule(r"b4\.(fc|out)\.bias", r"params/b4/\1/bias"),
    Rule(_BLOCK + r"(?:(?:fromrgb|conv0|conv1|skip|conv)\.)?resample_filter", None, common.standard_filter()),
)

_MAPPING_KWARGS = {"num_layers", "lr_multiplier", "layer_features", "embed_features", "w_avg_beta", "activation"}
_SYNTHESIS_KWARGS = {
    "channel_base", "channel_max", "num_fp16_res", "conv_clamp", "architecture", "resample_filter",
    "use_noise", "activation", "fp16_channels_last", "fused_modconv_default", "kernel_size",
}  # fmt: skip
_DISCRIMINATOR_KWARGS = {
    "c_dim", "img_resolution", "img_channels", "architecture", "channel_base", "channel_max", "num_fp16_res",
    "conv_clamp", "cmap_dim", "block_kwargs", "mapping_kwargs", "epilogue_kwargs",
}  # fmt: skip


def _generator_config(kw: Mapping[str, Any], path: Path) -> sg2.StyleGAN2Config:
    mapping = dict(kw.get("mapping_kwargs") or {})
    synthesis = dict(kw.get("synthesis_kwargs") or {})
    hint = " (not a StyleGAN2-ADA generator, e.g. StyleGAN3?)"
    common.check_known(mapping, _MAPPING_KWARGS, "mapping_kwargs", path, hint)
    common.check_known(synthesis, _SYNTHESIS_KWARGS, "synthesis_kwargs", path, hint)
    common.check_defaults(mapping, {"activation": "lrelu"}, "mapping", path)
    common.check_defaults(
        synthesis,
        {"resample_filter": [1, 3, 3, 1], "use_noise": True, "activation": "lrelu", "kernel_size": 3},
        "synthesis",
        path,
    )
    try:
        settings = dict(
            z_dim=int(kw["z_dim"]),
            c_dim=int(kw["c_dim"]),
            w_dim=int(kw["w_dim"]),
            img_resolution=int(kw["img_resolution"]),
            img_channels=int(kw["img_channels"]),
        )
    except KeyError as e:
        raise FileFormatError(path, f"generator init_kwargs lack {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise FileFormatError(path, f"generator init_kwargs: {e}") from None
    return common.generator_config(
        path,
        **settings,
        mapping_layers=int(mapping.get("num_layers", 8)),
        mapping_lr_multiplier=float(mapping.get("lr_multiplier", 0.01)),
        layer_features=mapping.get("layer_features"),
        embed_features=mapping.get("embed_features"),
        channel_base=int(synthesis.get("channel_base", 32768)),
        channel_max=int(synthesis.get("channel_max", 512)),
        conv_clamp=common.opt_float(synthesis.get("conv_clamp")),
        num_fp16_res=int(synthesis.get("num_fp16_res", 0)),
        architecture=synthesis.get("architecture", "skip"),
    )


def _discriminator_config(kw: Mapping[str, Any], path: Path) -> disc.DiscriminatorConfig:
    common.check_known(kw, _DISCRIMINATOR_KWARGS, "discriminator kwargs", path)
    common.check_defaults(kw, {"c_dim": 0, "architecture": "resnet"}, "discriminator", path)
    common.check_defaults(kw.get("block_kwargs") or {}, {"resample_filter": [1, 3, 3, 1], "activation": "lrelu",
                          "freeze_layers": 0}, "discriminator block", path)  # fmt: skip
    epilogue = kw.get("epilogue_kwargs") or {}
    common.check_defaults(epilogue, {"activation": "lrelu"}, "discriminator epilogue", path)
    return common.discriminator_config(
        path,
        img_resolution=int(kw["img_resolution"]),
        img_channels=int(kw["img_channels"]),
        channel_base=int(kw.get("channel_base", 32768)),
        channel_max=int(kw.get("channel_max", 512)),
        mbstd_group_size=epilogue.get("mbstd_group_size", 4),
        mbstd_num_channels=int(epilogue.get("mbstd_num_channels", 1)),
        conv_clamp=common.opt_float(kw.get("conv_clamp")),
    )


def convert_nvidia_pkl(path: str | os.PathLike, *, network: str | None = None) -> Converted:
    """Converts a stylegan2-ada-pytorch network pickle (``G_ema`` by default, or ``network='G'`` / ``'D'``)."""
    path = Path(path)
    pkl = load_nvidia_pkl(path)
    nets = {k: v for k, v in pkl.items() if isinstance(v, PersistentModule)}
    aliases = {"g_ema": "G_ema", "g": "G", "gs": "G_ema", "d": "D"}
    name, module = common.pick(nets, network, "G_ema", aliases, path)
    source = [(path, module.params)]
    if module.class_name == "Discriminator":
        cfg = _discriminator_config(module.init_kwargs, path)
        flat = apply_table(DISCRIMINATOR_RULES, source, common.discriminator_leaves(cfg),
                           what="a stylegan2-ada-pytorch discriminator")
        return common.converted(cfg, flat, kind=disc.KIND, network=name, init_kwargs=module.init_kwargs)
    if module.class_name != "Generator":
        raise FileFormatError(path, f"{name} is a {module.class_name}, not a Generator or Discriminator")
    cfg = _generator_config(module.init_kwargs, path)
    flat = apply_table(GENERATOR_RULES, source, common.generator_leaves(cfg), what="a stylegan2-ada-pytorch generator")
    return common.converted(cfg, flat, network=name, init_kwargs=module.init_kwargs)


def _state_dict_config(sd: Mapping[str, np.ndarray], path: Path) -> sg2.StyleGAN2Config:
    """The architecture a generator state dict's tensor shapes imply."""
    fcs = sorted(int(m[1]) for k in sd if (m := re.fullmatch(r"mapping\.fc(\d+)\.weight", k)))
    blocks = sorted(int(m[1]) for k in sd if (m := re.fullmatch(r"synthesis\.b(\d+)\.conv1\.weight", k)))
    if not fcs or not blocks:
        raise FileFormatError(path, "state dict has no mapping.fc*/synthesis.b*.conv1 weights")
    embed = sd.get("mapping.embed.weight")
    c_dim, embed_features = (0, None) if embed is None else (embed.shape[1], embed.shape[0])
    channel_base, channel_max = common.channel_schedule(
        {r: sd[f"synthesis.b{r}.conv1.weight"].shape[0] for r in blocks}, path
    )
    return common.generator_config(
        path,
        z_dim=sd["mapping.fc0.weight"].shape[1] - (embed_features or 0),
        c_dim=c_dim,
        w_dim=sd["mapping.w_avg"].shape[0],
        img_resolution=max(blocks),
        img_channels=sd[f"synthesis.b{max(blocks)}.torgb.weight"].shape[0],
        mapping_layers=len(fcs),
        layer_features=sd["mapping.fc0.weight"].shape[0] if len(fcs) > 1 else None,
        embed_features=embed_features,
        channel_base=channel_base,
        channel_max=channel_max,
    )


def convert_state_dict(path: str | os.PathLike, *, network: str | None = None) -> Converted:
    """Converts ``torch.save(G_ema.state_dict())`` of stylegan2-ada-pytorch; architecture from tensor shapes."""
    path = Path(path)
    if network is not None:
        raise FileFormatError(path, "a state dict holds one network; network= does not apply")
    sd = load_torch(path)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise FileFormatError(path, f"not a stylegan2-ada-pytorch generator state dict (a {type(sd).__name__})")
    sd = {str(k).removeprefix("module."): v for k, v in sd.items()}
    if "synthesis.b4.const" not in sd or "mapping.w_avg" not in sd:
        hint = " (a rosinality checkpoint: use convert_rosinality)" if "g_ema" in sd else ""
        raise FileFormatError(path, f"not a stylegan2-ada-pytorch generator state dict (keys {list(sd)[:4]}...){hint}")
    bad = [k for k, v in sd.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise FileFormatError(path, f"state dict entry {bad[0]!r} is not a tensor")
    cfg = _state_dict_config(sd, path)
    flat = apply_table(GENERATOR_RULES, [(path, sd)], common.generator_leaves(cfg),
                       what="a stylegan2-ada-pytorch generator")
    assumed = {"mapping_lr_multiplier": 0.01, "conv_clamp": None, "num_fp16_res": 0}
    return common.converted(cfg, flat, network="state_dict", assumed=assumed)

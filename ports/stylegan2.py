"""Converters of StyleGAN2 networks to the project's format (``magec_jax.models.stylegan2`` generators, kind
``stylegan2``; NVIDIA discriminators as ``magec_jax.models.discriminator``, kind ``stylegan2_discriminator``).

Four source formats, each read without torch or TensorFlow and without running code from the file:

* ``convert_nvidia_pkl``: stylegan2-ada-pytorch network pickles (``G_ema`` by default; ``network='G'`` or
  ``'D'``). The architecture comes from the pickled ``init_kwargs``.
* ``convert_tf_pkl``: NVlabs/stylegan2 TensorFlow pickles ``(G, D, Gs)`` (``Gs`` by default; ``'G'``, ``'D'``).
  The architecture comes from ``static_kwargs``, mapped as NVIDIA's ``legacy.py`` does (``channel_base =
  2 * fmap_base``, ...).
* ``convert_state_dict``: a ``torch.save(G_ema.state_dict())`` of stylegan2-ada-pytorch. The architecture is
  inferred from tensor shapes; what shapes cannot tell (the mapping lr multiplier, ``conv_clamp``) takes
  NVIDIA's defaults, recorded under ``manifest['extra']['assumed']``.
* ``convert_rosinality``: rosinality/stylegan2-pytorch checkpoints (``g_ema`` by default; ``network='g'``),
  architecture inferred from shapes, ``latent_avg`` as ``w_avg`` (estimated from the mapping network when
  the file has none, and recorded so). Rosinality discriminators are not converted.

Each converter is ONE table of ``(regex on the source name, target leaf, transform)`` rules (one more for
NVIDIA discriminators). Every source tensor must match a rule (resample filters are checked against the
standard one, not copied) and every leaf of the Flax variables must be produced exactly once with its
expected shape; otherwise the error names the offender.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from magec_jax.errors import FileFormatError
from magec_jax.models import stylegan2 as sg2
from magec_jax.weights import Converted, unflatten

CONVERTER = "ports.stylegan2/1"
_FIR = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 64  # NVIDIA resample_filter
_W_AVG_SAMPLES = 4096

Target = str | Callable[[re.Match], str] | None
Rule = tuple[str, Target, Callable[[np.ndarray], np.ndarray]]


# ---------------------------------------------------------------------------------------------- transforms
def _same(a: np.ndarray) -> np.ndarray:
    return a


def _t(a: np.ndarray) -> np.ndarray:
    """Dense ``[out, in]`` -> ``[in, out]`` (and modulation ``[I, w_dim]`` -> ``[w_dim, I]``)."""
    return a.T


def _oihw_to_hwio(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 1, 0)


def _chw_to_hwc(a: np.ndarray) -> np.ndarray:
    return a.transpose(1, 2, 0)


def _scalar(a: np.ndarray) -> np.ndarray:
    return a.reshape(())


def _check_filter(expected: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A rule transform for resample-filter buffers: not copied (the model's FIR is fixed), but verified."""

    def check(a: np.ndarray) -> np.ndarray:
        if a.shape != expected.shape or not np.allclose(a, expected, rtol=0, atol=1e-7):
            raise ValueError(f"resample filter {a.tolist()} is not the standard outer([1,3,3,1]) filter")
        return a

    return check


# ---------------------------------------------------------------------------------------------- the engine
def _expected_leaves(shapes: Mapping[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
    """``{'params/synthesis/b4/const': ShapeDtypeStruct, ...}`` from a tree of variable shapes."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(shapes)
    return {"/".join(str(k.key) for k in keys): leaf for keys, leaf in leaves}


def _generator_leaves(cfg: sg2.StyleGAN2Config) -> dict[str, jax.ShapeDtypeStruct]:
    return _expected_leaves(sg2.variable_shapes(cfg))


def _discriminator_leaves(cfg: Any) -> dict[str, jax.ShapeDtypeStruct]:
    from magec_jax.models.discriminator import Discriminator

    img = jax.ShapeDtypeStruct((4, cfg.img_resolution, cfg.img_resolution, cfg.img_channels), jnp.float32)
    return _expected_leaves(jax.eval_shape(Discriminator(cfg).init, jax.random.key(0), img))


def _apply_table(
    table: Sequence[Rule],
    source: Mapping[str, np.ndarray],
    expected: Mapping[str, jax.ShapeDtypeStruct],
    path: Path,
    *,
    fill_later: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """Maps every source tensor through the first matching rule; returns the flat target leaves.

    Raises FileFormatError naming the first unconsumed source tensor, missing or duplicate target leaf, or
    shape mismatch. ``fill_later`` are target leaves the caller produces itself.
    """
    out: dict[str, np.ndarray] = {}
    unconsumed = []
    for name, value in source.items():
        for pattern, target, transform in table:
            match = re.fullmatch(pattern, name)
            if match:
                break
        else:
            unconsumed.append(name)
            continue
        try:
            converted = transform(np.asarray(value))
        except ValueError as e:
            raise FileFormatError(path, f"{name}: {e}") from None
        if target is None:
            continue
        leaf = target if isinstance(target, str) else target(match)
        leaf = leaf.format(*match.groups())
        if leaf not in expected:
            raise FileFormatError(path, f"{name} maps to {leaf}, which the architecture read from the file lacks")
        if leaf in out:
            raise FileFormatError(path, f"{name}: target {leaf} produced twice")
        if converted.shape != expected[leaf].shape:
            raise FileFormatError(
                path,
                f"{name} {list(value.shape)} gives {leaf} {list(converted.shape)}, expected {list(expected[leaf].shape)}",
            )
        out[leaf] = np.array(converted, np.float32, order="C")  # a writable copy; keeps 0-d leaves 0-d
    if unconsumed:
        more = f" and {len(unconsumed) - 1} more" if len(unconsumed) > 1 else ""
        raise FileFormatError(path, f"tensor {unconsumed[0]!r}{more} not used by the converter (another network?)")
    missing = sorted(set(expected) - set(out) - set(fill_later))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise FileFormatError(path, f"no tensor for {missing[0]}{more} (incomplete, or not this kind of network)")
    return out


def _jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars and arrays (possible in pickled kwargs) turned into JSON values."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _converted(cfg: Any, flat: Mapping[str, np.ndarray], *, kind: str = sg2.KIND, **extra: Any) -> Converted:
    return Converted(
        kind=kind,
        config=cfg.to_dict(),
        variables=unflatten(flat),
        manifest={"converter": CONVERTER, "extra": _jsonable(extra)},
    )


def _pick(networks: Mapping[str, Any], network: str | None, default: str, aliases: Mapping[str, str], path: Path):
    """The network named ``network`` (case-insensitive, with aliases), or ``default``."""
    name = default if network is None else aliases.get(network.lower(), network)
    if name not in networks:
        raise FileFormatError(path, f"no network {network!r} (has {sorted(map(str, networks))})")
    return name, networks[name]


def _channel_schedule(channels: Mapping[int, int], path: Path) -> tuple[int, int]:
    """``(channel_base, channel_max)`` reproducing ``{resolution: channels}``, or an error."""
    channel_max = max(channels.values())
    below = [r for r, c in channels.items() if c < channel_max]
    channel_base = channels[max(below)] * max(below) if below else channel_max * max(channels)
    if any(min(channel_base // r, channel_max) != c for r, c in channels.items()):
        raise FileFormatError(
            path,
            f"channels per resolution {dict(sorted(channels.items()))} follow no "
            "min(channel_base // R, channel_max) schedule",
        )
    return channel_base, channel_max


# ---------------------------------------------------------------------------------------------- NVIDIA PyTorch
def _nvidia_table() -> list[Rule]:
    """stylegan2-ada-pytorch state-dict names -> Flax leaves (shared by pickles and plain state dicts)."""
    syn = r"synthesis\.b(\d+)\."
    return [
        (r"mapping\.fc(\d+)\.weight", "params/mapping/fc{0}/weight", _t),
        (r"mapping\.fc(\d+)\.bias", "params/mapping/fc{0}/bias", _same),
        (r"mapping\.embed\.weight", "params/mapping/embed/weight", _t),
        (r"mapping\.embed\.bias", "params/mapping/embed/bias", _same),
        (r"mapping\.w_avg", "buffers/mapping/w_avg", _same),
        (syn + r"const", "params/synthesis/b{0}/const", _chw_to_hwc),
        (syn + r"(conv[01]|torgb)\.weight", "params/synthesis/b{0}/{1}/weight", _oihw_to_hwio),
        (syn + r"(conv[01]|torgb)\.bias", "params/synthesis/b{0}/{1}/bias", _same),
        (syn + r"(conv[01]|torgb)\.affine\.weight", "params/synthesis/b{0}/{1}/affine/weight", _t),
        (syn + r"(conv[01]|torgb)\.affine\.bias", "params/synthesis/b{0}/{1}/affine/bias", _same),
        (syn + r"(conv[01])\.noise_strength", "params/synthesis/b{0}/{1}/noise_strength", _scalar),
        (syn + r"(conv[01])\.noise_const", "buffers/synthesis/b{0}/{1}/noise_const", _same),
        (syn + r"(?:(?:conv[01]|torgb)\.)?resample_filter", None, _check_filter(_FIR)),
    ]


_MAPPING_KWARGS = {"num_layers", "lr_multiplier", "layer_features", "embed_features", "w_avg_beta", "activation"}
_SYNTHESIS_KWARGS = {
    "channel_base", "channel_max", "num_fp16_res", "conv_clamp", "architecture", "resample_filter",
    "use_noise", "activation", "fp16_channels_last", "fused_modconv_default", "kernel_size",
}  # fmt: skip


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _check_defaults(kwargs: Mapping[str, Any], defaults: Mapping[str, Any], what: str, path: Path) -> None:
    """Settings the port does not implement must have their standard value."""
    for key, standard in defaults.items():
        if key in kwargs and kwargs[key] is not None and kwargs[key] != standard:
            raise FileFormatError(path, f"{what} {key}={kwargs[key]!r} is not supported (only {standard!r})")


def _config_from_init_kwargs(kw: Mapping[str, Any], path: Path) -> sg2.StyleGAN2Config:
    mapping = dict(kw.get("mapping_kwargs") or {})
    synthesis = dict(kw.get("synthesis_kwargs") or {})
    for what, given, known in (
        ("mapping_kwargs", mapping, _MAPPING_KWARGS),
        ("synthesis_kwargs", synthesis, _SYNTHESIS_KWARGS),
    ):
        unknown = sorted(set(given) - known)
        if unknown:
            raise FileFormatError(path, f"unknown {what} {unknown} (not a StyleGAN2-ADA generator, e.g. StyleGAN3?)")
    _check_defaults(mapping, {"activation": "lrelu"}, "mapping", path)
    _check_defaults(
        synthesis,
        {"resample_filter": [1, 3, 3, 1], "use_noise": True, "activation": "lrelu", "kernel_size": 3},
        "synthesis",
        path,
    )
    try:
        return sg2.StyleGAN2Config(
            z_dim=int(kw["z_dim"]),
            c_dim=int(kw["c_dim"]),
            w_dim=int(kw["w_dim"]),
            img_resolution=int(kw["img_resolution"]),
            img_channels=int(kw["img_channels"]),
            mapping_layers=int(mapping.get("num_layers", 8)),
            mapping_lr_multiplier=float(mapping.get("lr_multiplier", 0.01)),
            layer_features=mapping.get("layer_features"),
            embed_features=mapping.get("embed_features"),
            channel_base=int(synthesis.get("channel_base", 32768)),
            channel_max=int(synthesis.get("channel_max", 512)),
            conv_clamp=_opt_float(synthesis.get("conv_clamp")),
            num_fp16_res=int(synthesis.get("num_fp16_res", 0)),
            architecture=synthesis.get("architecture", "skip"),
        )
    except KeyError as e:
        raise FileFormatError(path, f"generator init_kwargs lack {e.args[0]!r}") from None
    except ValueError as e:
        raise FileFormatError(path, str(e)) from None


def convert_nvidia_pkl(path: str | os.PathLike, *, network: str | None = None) -> Converted:
    """Converts a stylegan2-ada-pytorch network pickle (``G_ema`` by default, or ``network='G'``)."""
    from ports.nvidia import PersistentModule, load_nvidia_pkl

    path = Path(path)
    pkl = load_nvidia_pkl(path)
    nets = {k: v for k, v in pkl.items() if isinstance(v, PersistentModule)}
    aliases = {"g_ema": "G_ema", "g": "G", "gs": "G_ema", "d": "D"}
    name, module = _pick(nets, network, "G_ema", aliases, path)
    if module.class_name == "Discriminator":
        cfg = _d_config_from_init_kwargs(module.init_kwargs, path)
        flat = _apply_table(_nvidia_d_table(), module.params, _discriminator_leaves(cfg), path)
        return _converted(cfg, flat, kind=_D_KIND, network=name, init_kwargs=module.init_kwargs)
    if module.class_name != "Generator":
        raise FileFormatError(path, f"{name} is a {module.class_name}, not a Generator or Discriminator")
    cfg = _config_from_init_kwargs(module.init_kwargs, path)
    flat = _apply_table(_nvidia_table(), module.params, _generator_leaves(cfg), path)
    return _converted(cfg, flat, network=name, init_kwargs=module.init_kwargs)


def convert_state_dict(path: str | os.PathLike, *, network: str | None = None) -> Converted:
    """Converts ``torch.save(G_ema.state_dict())`` of stylegan2-ada-pytorch; architecture from tensor shapes."""
    from ports.torch_files import load_torch

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
    fcs = sorted(int(m[1]) for k in sd if (m := re.fullmatch(r"mapping\.fc(\d+)\.weight", k)))
    blocks = sorted(int(m[1]) for k in sd if (m := re.fullmatch(r"synthesis\.b(\d+)\.conv1\.weight", k)))
    if not fcs or not blocks:
        raise FileFormatError(path, "state dict has no mapping.fc*/synthesis.b*.conv1 weights")
    w_dim = sd["mapping.w_avg"].shape[0]
    embed = sd.get("mapping.embed.weight")
    c_dim, embed_features = (0, None) if embed is None else (embed.shape[1], embed.shape[0])
    schedule = _channel_schedule({r: sd[f"synthesis.b{r}.conv1.weight"].shape[0] for r in blocks}, path)
    cfg = sg2.StyleGAN2Config(
        z_dim=sd["mapping.fc0.weight"].shape[1] - (embed_features or 0),
        c_dim=c_dim,
        w_dim=w_dim,
        img_resolution=max(blocks),
        img_channels=sd[f"synthesis.b{max(blocks)}.torgb.weight"].shape[0],
        mapping_layers=len(fcs),
        layer_features=sd["mapping.fc0.weight"].shape[0] if len(fcs) > 1 else None,
        embed_features=embed_features,
        channel_base=schedule[0],
        channel_max=schedule[1],
    )
    flat = _apply_table(_nvidia_table(), sd, _generator_leaves(cfg), path)
    assumed = {"mapping_lr_multiplier": 0.01, "conv_clamp": None, "num_fp16_res": 0}
    return _converted(cfg, flat, network="state_dict", assumed=assumed)


# ---------------------------------------------------------------------------------------------- NVIDIA TF
_TF_KWARGS = {
    "latent_size", "label_size", "dlatent_size", "resolution", "num_channels", "mapping_layers", "label_fmaps",
    "mapping_fmaps", "mapping_nonlinearity", "mapping_lrmul", "w_avg_beta", "fmap_base", "fmap_max",
    "num_fp16_res", "conv_clamp", "architecture", "resample_kernel", "use_noise", "nonlinearity",
    "truncation_psi", "truncation_cutoff", "style_mixing_prob", "structure", "conditioning", "fused_modconv",
    "dlatent_broadcast",
}  # fmt: skip


def _tf_noise_target(match: re.Match) -> str:
    """``synthesis/noise{k}``: k=0 -> b4/conv1; k=2*log2(R)-5 -> bR/conv0; k=2*log2(R)-4 -> bR/conv1."""
    k = int(match[1])
    if k == 0:
        return "buffers/synthesis/b4/conv1/noise_const"
    log2_res, conv = ((k + 5) // 2, "conv0") if k % 2 else ((k + 4) // 2, "conv1")
    return f"buffers/synthesis/b{2**log2_res}/{conv}/noise_const"


def _tf_table() -> list[Rule]:
    """TF variable names (prefixed with the component key) -> Flax leaves; TF kernels are already HWIO."""
    res = r"synthesis/(\d+)x\d+/"
    layer = r"(Conv|Conv0_up|Conv1|ToRGB)"

    def layer_leaf(leaf: str) -> Callable[[re.Match], str]:
        names = {"Conv": "conv1", "Conv0_up": "conv0", "Conv1": "conv1", "ToRGB": "torgb"}
        return lambda m: f"params/synthesis/b{m[1]}/{names[m[2]]}/{leaf}"

    return [
        (r"lod", None, _same),
        (r"dlatent_avg", "buffers/mapping/w_avg", _same),
        (r"mapping/Dense(\d+)/weight", "params/mapping/fc{0}/weight", _same),
        (r"mapping/Dense(\d+)/bias", "params/mapping/fc{0}/bias", _same),
        (r"mapping/LabelEmbed/weight", "params/mapping/embed/weight", _same),
        (r"mapping/LabelEmbed/bias", "params/mapping/embed/bias", _same),
        (r"synthesis/noise(\d+)", _tf_noise_target, lambda a: a[0, 0]),
        (res + r"Const/const", "params/synthesis/b{0}/const", lambda a: a[0].transpose(1, 2, 0)),
        (res + r"(Conv0_up)/weight", layer_leaf("weight"), lambda a: a[::-1, ::-1]),  # TF's up-conv is flipped
        (res + layer + r"/weight", layer_leaf("weight"), _same),
        (res + layer + r"/bias", layer_leaf("bias"), _same),
        (res + layer + r"/mod_weight", layer_leaf("affine/weight"), _same),
        (res + layer + r"/mod_bias", layer_leaf("affine/bias"), lambda a: a + 1),
        (res + layer + r"/noise_strength", layer_leaf("noise_strength"), _scalar),
    ]


def _config_from_static_kwargs(kw: Mapping[str, Any], path: Path) -> sg2.StyleGAN2Config:
    """TF ``static_kwargs`` -> config, with the defaults and renames of NVIDIA's ``legacy.py``."""
    unknown = sorted(set(kw) - _TF_KWARGS)
    if unknown:
        raise FileFormatError(path, f"unknown TF generator kwargs {unknown}")
    _check_defaults(
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
    try:
        return sg2.StyleGAN2Config(
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
            conv_clamp=_opt_float(kw.get("conv_clamp")),
            num_fp16_res=int(kw.get("num_fp16_res", 0)),
        )
    except ValueError as e:
        raise FileFormatError(path, str(e)) from None


def convert_tf_pkl(path: str | os.PathLike, *, network: str | None = None) -> Converted:
    """Converts an NVlabs/stylegan2 TensorFlow pickle (``Gs`` by default, or ``network='G'``)."""
    from ports.nvidia import load_tf_pkl

    path = Path(path)
    nets = load_tf_pkl(path)
    name, net = _pick(nets, network, "Gs", {"g_ema": "Gs", "gs": "Gs", "g": "G", "d": "D"}, path)
    if name == "D":
        cfg = _d_config_from_static_kwargs(net.static_kwargs, path)
        flat = _apply_table(_tf_d_table(), net.variables, _discriminator_leaves(cfg), path)
        return _converted(cfg, flat, kind=_D_KIND, network=name, static_kwargs=net.static_kwargs)
    if set(net.components) != {"mapping", "synthesis"}:
        raise FileFormatError(path, f"{name} has components {sorted(net.components)}, not mapping + synthesis")
    cfg = _config_from_static_kwargs(net.static_kwargs, path)
    source = dict(net.variables)
    for key, component in net.components.items():
        source.update((f"{key}/{var}", value) for var, value in component.variables.items())
    flat = _apply_table(_tf_table(), source, _generator_leaves(cfg), path)
    return _converted(cfg, flat, network=name, static_kwargs=net.static_kwargs)


# ---------------------------------------------------------------------------------------------- discriminators
_D_KIND = "stylegan2_discriminator"


def _nvidia_d_table() -> list[Rule]:
    """stylegan2-ada-pytorch ``Discriminator`` ('resnet', unconditional) names -> Flax leaves."""
    blk = r"b(\d+)\."
    return [
        (blk + r"(fromrgb|conv0|conv1|skip|conv)\.weight", "params/b{0}/{1}/weight", _oihw_to_hwio),
        (blk + r"(fromrgb|conv0|conv1|conv)\.bias", "params/b{0}/{1}/bias", _same),
        (r"b4\.(fc|out)\.weight", "params/b4/{0}/weight", _t),  # fc rows in NCHW flatten order, as NVIDIA's
        (r"b4\.(fc|out)\.bias", "params/b4/{0}/bias", _same),
        (blk + r"(?:(?:fromrgb|conv0|conv1|skip|conv)\.)?resample_filter", None, _check_filter(_FIR)),
    ]


def _tf_d_table() -> list[Rule]:
    """TF ``D_stylegan2`` variable names -> Flax leaves (TF kernels are HWIO already; no flips)."""
    res = r"(\d+)x\d+/"
    names = {"FromRGB": "fromrgb", "Conv0": "conv0", "Conv1_down": "conv1", "Skip": "skip", "Conv": "conv"}

    def leaf(what: str) -> Callable[[re.Match], str]:
        return lambda m: f"params/b{m[1]}/{names[m[2]]}/{what}"

    return [
        (res + r"(FromRGB|Conv0|Conv1_down|Skip|Conv)/weight", leaf("weight"), _same),
        (res + r"(FromRGB|Conv0|Conv1_down|Conv)/bias", leaf("bias"), _same),
        (r"4x4/Dense0/(weight|bias)", "params/b4/fc/{0}", _same),
        (r"Output/(weight|bias)", "params/b4/out/{0}", _same),
    ]


def _d_config(path: Path, **kw: Any) -> Any:
    from magec_jax.models.discriminator import DiscriminatorConfig

    try:
        return DiscriminatorConfig(**kw)
    except ValueError as e:
        raise FileFormatError(path, str(e)) from None


def _d_config_from_init_kwargs(kw: Mapping[str, Any], path: Path) -> Any:
    known = {"c_dim", "img_resolution", "img_channels", "architecture", "channel_base", "channel_max",
             "num_fp16_res", "conv_clamp", "cmap_dim", "block_kwargs", "mapping_kwargs", "epilogue_kwargs"}  # fmt: skip
    unknown = sorted(set(kw) - known)
    if unknown:
        raise FileFormatError(path, f"unknown discriminator kwargs {unknown}")
    _check_defaults(kw, {"c_dim": 0, "architecture": "resnet"}, "discriminator", path)
    _check_defaults(kw.get("block_kwargs") or {}, {"resample_filter": [1, 3, 3, 1], "activation": "lrelu",
                    "freeze_layers": 0}, "discriminator block", path)  # fmt: skip
    epilogue = kw.get("epilogue_kwargs") or {}
    _check_defaults(epilogue, {"activation": "lrelu"}, "discriminator epilogue", path)
    return _d_config(
        path,
        img_resolution=int(kw["img_resolution"]),
        img_channels=int(kw["img_channels"]),
        channel_base=int(kw.get("channel_base", 32768)),
        channel_max=int(kw.get("channel_max", 512)),
        mbstd_group_size=epilogue.get("mbstd_group_size", 4),
        mbstd_num_channels=int(epilogue.get("mbstd_num_channels", 1)),
        conv_clamp=_opt_float(kw.get("conv_clamp")),
    )


def _d_config_from_static_kwargs(kw: Mapping[str, Any], path: Path) -> Any:
    """TF ``D_stylegan2`` kwargs -> config, with the defaults of ``legacy.convert_tf_discriminator``."""
    known = {"num_channels", "resolution", "label_size", "fmap_base", "fmap_max", "mbstd_group_size",
             "mbstd_num_features", "architecture", "nonlinearity", "resample_kernel", "num_fp16_res",
             "conv_clamp", "mapping_layers", "mapping_fmaps", "mapping_lrmul", "freeze_layers", "structure"}  # fmt: skip
    unknown = sorted(set(kw) - known)
    if unknown:
        raise FileFormatError(path, f"unknown TF discriminator kwargs {unknown}")
    _check_defaults(kw, {"label_size": 0, "architecture": "resnet", "nonlinearity": "lrelu",
                         "resample_kernel": [1, 3, 3, 1], "freeze_layers": 0}, "TF discriminator", path)  # fmt: skip
    return _d_config(
        path,
        img_resolution=int(kw.get("resolution", 1024)),
        img_channels=int(kw.get("num_channels", 3)),
        channel_base=2 * int(kw.get("fmap_base", 16384)),
        channel_max=int(kw.get("fmap_max", 512)),
        mbstd_group_size=kw.get("mbstd_group_size"),
        mbstd_num_channels=int(kw.get("mbstd_num_features", 1)),
        conv_clamp=_opt_float(kw.get("conv_clamp")),
    )


# ---------------------------------------------------------------------------------------------- rosinality
def _rosinality_table(cfg: sg2.StyleGAN2Config) -> list[Rule]:
    """rosinality state-dict names (+ top-level ``latent_avg``) -> Flax leaves.

    ``convs.{2j}`` / ``convs.{2j+1}`` are conv0 / conv1 of resolution 2**(j+3); ``to_rgbs.{j}`` its torgb;
    ``noises.noise_{i}`` follow :func:`noise_shapes` order. Conv weights ``[1, O, I, K, K]``.
    """
    layers = [name for name, _ in sg2.noise_shapes(cfg)]

    def conv(leaf: str) -> Callable[[re.Match], str]:
        return lambda m: f"params/synthesis/b{2 ** (int(m[1]) // 2 + 3)}/conv{int(m[1]) % 2}/{leaf}"

    def rgb(leaf: str) -> Callable[[re.Match], str]:
        return lambda m: f"params/synthesis/b{2 ** (int(m[1]) + 3)}/torgb/{leaf}"

    def noise(m: re.Match) -> str:
        i = int(m[1])
        return f"buffers/synthesis/{layers[i]}/noise_const" if i < len(layers) else f"(noise {i} of {len(layers)})"

    def style_index(m: re.Match) -> int:
        return int(m[1]) - 1  # style.0 is the parameter-free PixelNorm

    def weight(a: np.ndarray) -> np.ndarray:
        return a[0].transpose(2, 3, 1, 0)  # [1, O, I, K, K] -> [K, K, I, O]

    return [
        (r"latent_avg", "buffers/mapping/w_avg", lambda a: a.reshape(-1)),
        (r"style\.(\d+)\.weight", lambda m: f"params/mapping/fc{style_index(m)}/weight", _t),
        (r"style\.(\d+)\.bias", lambda m: f"params/mapping/fc{style_index(m)}/bias", _same),
        (r"input\.input", "params/synthesis/b4/const", lambda a: a[0].transpose(1, 2, 0)),
        (r"conv1\.conv\.weight", "params/synthesis/b4/conv1/weight", weight),
        (r"conv1\.conv\.modulation\.weight", "params/synthesis/b4/conv1/affine/weight", _t),
        (r"conv1\.conv\.modulation\.bias", "params/synthesis/b4/conv1/affine/bias", _same),
        (r"conv1\.noise\.weight", "params/synthesis/b4/conv1/noise_strength", _scalar),
        (r"conv1\.activate\.bias", "params/synthesis/b4/conv1/bias", _same),
        (r"convs\.(\d+)\.conv\.weight", conv("weight"), weight),
        (r"convs\.(\d+)\.conv\.modulation\.weight", conv("affine/weight"), _t),
        (r"convs\.(\d+)\.conv\.modulation\.bias", conv("affine/bias"), _same),
        (r"convs\.(\d+)\.noise\.weight", conv("noise_strength"), _scalar),
        (r"convs\.(\d+)\.activate\.bias", conv("bias"), _same),
        (r"convs\.(\d+)\.conv\.blur\.kernel", None, _check_filter(4 * _FIR)),
        (r"to_rgb1\.conv\.weight", "params/synthesis/b4/torgb/weight", weight),
        (r"to_rgb1\.conv\.modulation\.weight", "params/synthesis/b4/torgb/affine/weight", _t),
        (r"to_rgb1\.conv\.modulation\.bias", "params/synthesis/b4/torgb/affine/bias", _same),
        (r"to_rgb1\.bias", "params/synthesis/b4/torgb/bias", lambda a: a.reshape(-1)),
        (r"to_rgbs\.(\d+)\.conv\.weight", rgb("weight"), weight),
        (r"to_rgbs\.(\d+)\.conv\.modulation\.weight", rgb("affine/weight"), _t),
        (r"to_rgbs\.(\d+)\.conv\.modulation\.bias", rgb("affine/bias"), _same),
        (r"to_rgbs\.(\d+)\.bias", rgb("bias"), lambda a: a.reshape(-1)),
        (r"to_rgbs\.(\d+)\.upsample\.kernel", None, _check_filter(4 * _FIR)),
        (r"noises\.noise_(\d+)", noise, lambda a: a[0, 0]),
    ]


def _rosinality_config(sd: Mapping[str, np.ndarray], path: Path) -> sg2.StyleGAN2Config:
    styles = sorted(int(m[1]) for k in sd if (m := re.fullmatch(r"style\.(\d+)\.weight", k)))
    convs = sorted(int(m[1]) for k in sd if (m := re.fullmatch(r"convs\.(\d+)\.conv\.weight", k)))
    if not styles or "conv1.conv.weight" not in sd or "to_rgb1.conv.weight" not in sd:
        raise FileFormatError(path, "g_ema lacks style.*/conv1/to_rgb1 weights: not a rosinality generator")
    if len(convs) % 2:
        raise FileFormatError(path, f"odd number of convs ({len(convs)}): incomplete rosinality generator")
    resolution = 4 * 2 ** (len(convs) // 2)
    channels = {4: sd["conv1.conv.weight"].shape[1]}
    channels.update({2 ** (k // 2 + 3): sd[f"convs.{k}.conv.weight"].shape[1] for k in convs if k % 2})
    channel_base, channel_max = _channel_schedule(channels, path)
    style_dim = sd["style.1.weight"].shape[1]
    try:
        return sg2.StyleGAN2Config(
            z_dim=style_dim,
            w_dim=sd[f"style.{max(styles)}.weight"].shape[0],
            img_resolution=resolution,
            img_channels=sd["to_rgb1.conv.weight"].shape[1],
            mapping_layers=len(styles),
            layer_features=sd["style.1.weight"].shape[0] if len(styles) > 1 else None,
            channel_base=channel_base,
            channel_max=channel_max,
        )
    except ValueError as e:
        raise FileFormatError(path, str(e)) from None


def _estimate_w_avg(cfg: sg2.StyleGAN2Config, flat: Mapping[str, np.ndarray]) -> np.ndarray:
    """Mean mapping output of ``_W_AVG_SAMPLES`` z from ``np.random.RandomState(0)`` (rosinality's mean_latent)."""
    variables = unflatten({**flat, "buffers/mapping/w_avg": np.zeros(cfg.w_dim, np.float32)})
    z = np.random.RandomState(0).randn(_W_AVG_SAMPLES, cfg.z_dim).astype(np.float32)
    ws = sg2.Generator(cfg).apply(variables, jnp.asarray(z), method="mapping")
    return np.asarray(ws[:, 0].mean(axis=0), np.float32)


def convert_rosinality(path: str | os.PathLike, *, network: str | None = None) -> Converted:
    """Converts a rosinality/stylegan2-pytorch checkpoint (``g_ema`` by default, or ``network='g'``)."""
    from ports.torch_files import load_torch

    path = Path(path)
    ckpt = load_torch(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("g_ema", ckpt.get("g")), dict):
        found = sorted(map(str, ckpt))[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise FileFormatError(path, f"not a rosinality checkpoint (no 'g_ema' state dict; found {found})")
    nets = {k: v for k, v in ckpt.items() if k in ("g_ema", "g", "d")}
    name, sd = _pick(nets, network, "g_ema", {"g_ema": "g_ema", "g": "g", "gs": "g_ema"}, path)
    if name == "d":
        raise FileFormatError(path, "rosinality discriminators are not converted (generators only)")
    cfg = _rosinality_config(sd, path)
    source = dict(sd)
    has_avg = ckpt.get("latent_avg") is not None
    if has_avg:
        source["latent_avg"] = ckpt["latent_avg"]
    flat = _apply_table(
        _rosinality_table(cfg),
        source,
        _generator_leaves(cfg),
        path,
        fill_later=() if has_avg else ("buffers/mapping/w_avg",),
    )
    extra: dict[str, Any] = {"network": name, "assumed": {"mapping_lr_multiplier": 0.01}}
    if not has_avg:
        flat["buffers/mapping/w_avg"] = _estimate_w_avg(cfg, flat)
        extra["w_avg"] = f"estimated: mean mapping(z) of {_W_AVG_SAMPLES} z, np.random.RandomState(0)"
    return _converted(cfg, flat, **extra)

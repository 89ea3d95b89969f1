"""Write an NVIDIA stylegan2-ada-pytorch training snapshot (``G``, ``D``, ``G_ema``) with random weights.

The layout mirrors ``training_loop.py``'s snapshots exactly as the fixture README describes them: every module
is ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = {'type': 'class', 'version': 6,
'module_src', 'class_name', 'state'}``, the state holds ``_parameters``/``_buffers``/``_modules`` (plus torch-2
hook dicts), plain attributes and ``_init_args``/``_init_kwargs`` (EasyDicts), and every tensor is
``_rebuild_parameter``/``_rebuild_tensor_v2`` over a storage pickled as ``torch.storage._load_from_bytes`` of a
legacy ``torch.save`` stream. Names, shapes, init kwargs and attributes follow NVIDIA's ``training/networks.py``
(``Generator``, ``Discriminator`` and their layers).

The defaults give a config-f FFHQ-1024 snapshot (z_dim = w_dim = 512, 8 mapping layers, channel_base 32768,
channel_max 512, ADA's num_fp16_res 4 / conv_clamp 256), about 360 MB::

    python -m tests.tools.nvidia_pkl_writer /tmp/ffhq1024-random.pkl

Tensor data is drawn when it is pickled, so writing holds about one file size in memory.
"""

from __future__ import annotations

import argparse
import collections
import math
from pathlib import Path
from typing import Any

import numpy as np

try:  # as tests/tools (pytest puts tests/ on sys.path) or as tests.tools (from the repo root)
    from tools.torch_writers import NewObj, Ref, RefPickler, Storage, legacy_bytes
except ImportError:
    from tests.tools.torch_writers import NewObj, Ref, RefPickler, Storage, legacy_bytes

MODULE_SRC = "# source omitted from fixture"
_HOOK_DICTS = (
    "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook", "_forward_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_state_dict_hooks", "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)  # fmt: skip
_SQRT2 = np.float64(np.sqrt(2))
_FIR = [1, 3, 3, 1]


class _LazyStorage:
    """A storage whose data is drawn when pickled, so the writer never holds all tensors at once."""

    def __init__(self, shape: tuple[int, ...], seed: tuple[int, ...], value: np.ndarray | None):
        self.shape, self.seed, self.value = shape, seed, value

    def __reduce__(self):
        if self.value is not None:
            data = self.value
        else:
            data = np.random.default_rng(self.seed).standard_normal(self.shape, dtype=np.float32)
        return Ref("torch.storage._load_from_bytes"), (legacy_bytes(Storage(data)),)


class _Tensor:
    """A float32 tensor (parameter or buffer) of given shape: random N(0,1) from ``seed``, or ``value``."""

    def __init__(self, shape: tuple[int, ...], seed: tuple[int, ...], *, parameter: bool, value: Any = None):
        self.shape = tuple(shape)
        self.parameter = parameter
        value = None if value is None else np.asarray(value, np.float32).reshape(self.shape)
        self.storage = _LazyStorage(self.shape, seed, value)

    def __reduce__(self):
        stride = tuple(math.prod(self.shape[i + 1 :]) for i in range(len(self.shape)))
        args = (self.storage, 0, self.shape, stride, False, collections.OrderedDict())
        rebuilt = (Ref("torch._utils._rebuild_tensor_v2"), args)
        if not self.parameter:
            return rebuilt
        return Ref("torch._utils._rebuild_parameter"), (_Rebuilt(rebuilt), False, collections.OrderedDict())


class _Rebuilt:
    """Pickles as a given reduce tuple (the plain tensor inside a Parameter)."""

    def __init__(self, reduced: tuple):
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


def _easydict(value: Any) -> Any:
    if isinstance(value, dict):
        return NewObj("dnnlib.util.EasyDict", {k: _easydict(v) for k, v in value.items()})
    return value


class Module:
    """One persistent module: class name, constructor arguments, tensors, submodules and attributes."""

    def __init__(self, class_name: str, init_args: tuple, init_kwargs: dict, attrs: dict, module_src: str):
        self.class_name, self.init_args, self.init_kwargs = class_name, init_args, init_kwargs
        self.attrs, self.module_src = attrs, module_src
        self.params: dict[str, _Tensor] = {}
        self.buffers: dict[str, _Tensor] = {}
        self.modules: dict[str, Module] = {}
        self.tail: dict[str, Any] = {}  # attributes set after the submodules (e.g. Conv2dLayer.bias = None)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """``state_dict`` names and shapes, in ``state_dict`` order."""
        shapes = {name: t.shape for name, t in {**self.params, **self.buffers}.items()}
        for name, child in self.modules.items():
            shapes.update((f"{name}.{k}", s) for k, s in child.state_shapes().items())
        return shapes

    def __reduce__(self):
        state: dict[str, Any] = {"training": False, "_parameters": dict(self.params), "_buffers": dict(self.buffers)}
        state["_non_persistent_buffers_set"] = set()
        for name in _HOOK_DICTS:
            state[name] = None if name == "_is_full_backward_hook" else collections.OrderedDict()
        state["_modules"] = dict(self.modules)
        state.update(self.attrs)
        state.update(self.tail)
        state["_init_args"] = self.init_args
        state["_init_kwargs"] = _easydict(self.init_kwargs)
        meta = {"type": "class", "version": 6, "module_src": self.module_src, "class_name": self.class_name}
        meta["state"] = state
        return Ref("torch_utils.persistence._reconstruct_persistent_obj"), (meta,)


class _Builder:
    """Builds module trees with NVIDIA's names and shapes; every tensor gets its own seed."""

    def __init__(self, seed: int, module_src: str):
        self.seed, self.module_src, self.count = seed, module_src, 0

    def module(self, class_name: str, init_args: tuple, init_kwargs: dict, attrs: dict) -> Module:
        return Module(class_name, init_args, init_kwargs, {"training": False, **attrs}, self.module_src)

    def tensor(self, shape: tuple[int, ...], *, parameter: bool = True, value: Any = None) -> _Tensor:
        self.count += 1
        return _Tensor(shape, (self.seed, self.count), parameter=parameter, value=value)

    def resample_filter(self) -> _Tensor:
        f = np.asarray(_FIR, np.float32)
        return self.tensor((4, 4), parameter=False, value=np.outer(f, f) / f.sum() ** 2)

    def fc(self, in_f: int, out_f: int, kwargs: dict, activation: str = "linear", lr: float = 1) -> Module:
        m = self.module(
            "FullyConnectedLayer", (in_f, out_f), kwargs,
            {"activation": activation, "weight_gain": np.float64(lr / np.sqrt(in_f)), "bias_gain": lr},
        )  # fmt: skip
        m.params = {"weight": self.tensor((out_f, in_f)), "bias": self.tensor((out_f,))}
        return m

    def conv2d(
        self, in_ch: int, out_ch: int, k: int, kwargs: dict, *, activation: str, down: int = 1, bias: bool = True
    ) -> Module:
        m = self.module(
            "Conv2dLayer", (in_ch, out_ch), kwargs,
            {"activation": activation, "up": 1, "down": down, "conv_clamp": kwargs.get("conv_clamp"),
             "padding": k // 2, "weight_gain": np.float64(1 / np.sqrt(in_ch * k * k)),
             "act_gain": _SQRT2 if activation == "lrelu" else 1},
        )  # fmt: skip
        m.params = {"weight": self.tensor((out_ch, in_ch, k, k))}
        if bias:
            m.params["bias"] = self.tensor((out_ch,))
        else:
            m.tail["bias"] = None
        m.buffers = {"resample_filter": self.resample_filter()}
        return m

    def synthesis_layer(self, in_ch: int, out_ch: int, w_dim: int, res: int, conv_clamp: Any, up: int) -> Module:
        kwargs: dict[str, Any] = {"w_dim": w_dim, "resolution": res}
        if up == 2:
            kwargs.update(up=2, resample_filter=list(_FIR))
        kwargs.update(conv_clamp=conv_clamp, channels_last=False)
        m = self.module(
            "SynthesisLayer", (in_ch, out_ch), kwargs,
            {"resolution": res, "up": up, "use_noise": True, "activation": "lrelu", "conv_clamp": conv_clamp,
             "padding": 1, "act_gain": _SQRT2},
        )  # fmt: skip
        m.params = {"weight": self.tensor((out_ch, in_ch, 3, 3)), "noise_strength": self.tensor(()),
                    "bias": self.tensor((out_ch,))}  # fmt: skip
        m.buffers = {"resample_filter": self.resample_filter(), "noise_const": self.tensor((res, res), parameter=False)}
        m.modules = {"affine": self.fc(w_dim, in_ch, {"bias_init": 1})}
        return m

    def torgb(self, in_ch: int, img_channels: int, w_dim: int, conv_clamp: Any) -> Module:
        m = self.module(
            "ToRGBLayer", (in_ch, img_channels), {"w_dim": w_dim, "conv_clamp": conv_clamp, "channels_last": False},
            {"conv_clamp": conv_clamp, "weight_gain": np.float64(1 / np.sqrt(in_ch))},
        )  # fmt: skip
        m.params = {"weight": self.tensor((img_channels, in_ch, 1, 1)), "bias": self.tensor((img_channels,))}
        m.modules = {"affine": self.fc(w_dim, in_ch, {"bias_init": 1})}
        return m

    def generator(self, *, z_dim: int, w_dim: int, mapping_layers: int, resolution: int, img_channels: int,
                  synthesis_kwargs: dict) -> Module:  # fmt: skip
        log2 = int(np.log2(resolution))
        block_res = [2**i for i in range(2, log2 + 1)]
        base, cmax = synthesis_kwargs["channel_base"], synthesis_kwargs["channel_max"]
        channels = {res: min(base // res, cmax) for res in block_res}
        fp16_res = max(2 ** (log2 + 1 - synthesis_kwargs["num_fp16_res"]), 8)
        clamp, arch = synthesis_kwargs["conv_clamp"], synthesis_kwargs["architecture"]
        blocks: dict[str, Module] = {}
        num_ws = 0
        for res in block_res:
            in_ch, out_ch, is_last = (channels[res // 2] if res > 4 else 0), channels[res], res == resolution
            use_fp16 = res >= fp16_res
            block = self.module(
                "SynthesisBlock", (in_ch, out_ch),
                {"w_dim": w_dim, "resolution": res, "img_channels": img_channels, "is_last": is_last,
                 "use_fp16": use_fp16, "conv_clamp": clamp, "architecture": arch},
                {"in_channels": in_ch, "w_dim": w_dim, "resolution": res, "img_channels": img_channels,
                 "is_last": is_last, "architecture": arch, "use_fp16": use_fp16, "channels_last": False,
                 "num_conv": 1 if in_ch == 0 else 2, "num_torgb": 1},
            )  # fmt: skip
            if in_ch == 0:
                block.params = {"const": self.tensor((out_ch, res, res))}
            block.buffers = {"resample_filter": self.resample_filter()}
            if in_ch != 0:
                block.modules["conv0"] = self.synthesis_layer(in_ch, out_ch, w_dim, res, clamp, up=2)
            block.modules["conv1"] = self.synthesis_layer(out_ch, out_ch, w_dim, res, clamp, up=1)
            block.modules["torgb"] = self.torgb(out_ch, img_channels, w_dim, clamp)
            blocks[f"b{res}"] = block
            num_ws += block.attrs["num_conv"] + (1 if is_last else 0)
        synthesis = self.module(
            "SynthesisNetwork", (),
            {"w_dim": w_dim, "img_resolution": resolution, "img_channels": img_channels, **synthesis_kwargs},
            {"w_dim": w_dim, "img_resolution": resolution, "img_resolution_log2": log2, "img_channels": img_channels,
             "block_resolutions": block_res, "num_ws": num_ws},
        )  # fmt: skip
        synthesis.modules = blocks
        mapping = self.module(
            "MappingNetwork", (),
            {"z_dim": z_dim, "c_dim": 0, "w_dim": w_dim, "num_ws": num_ws, "num_layers": mapping_layers},
            {"z_dim": z_dim, "c_dim": 0, "w_dim": w_dim, "num_ws": num_ws, "num_layers": mapping_layers,
             "w_avg_beta": 0.995},
        )  # fmt: skip
        features = [z_dim] + [w_dim] * mapping_layers
        mapping.modules = {
            f"fc{i}": self.fc(features[i], features[i + 1], {"activation": "lrelu", "lr_multiplier": 0.01},
                              activation="lrelu", lr=0.01)
            for i in range(mapping_layers)
        }  # fmt: skip
        mapping.buffers = {"w_avg": self.tensor((w_dim,), parameter=False)}
        g = self.module(
            "Generator", (),
            {"z_dim": z_dim, "w_dim": w_dim, "mapping_kwargs": {"num_layers": mapping_layers},
             "synthesis_kwargs": synthesis_kwargs, "c_dim": 0, "img_resolution": resolution,
             "img_channels": img_channels},
            {"z_dim": z_dim, "c_dim": 0, "w_dim": w_dim, "img_resolution": resolution,
             "img_channels": img_channels, "num_ws": num_ws},
        )  # fmt: skip
        g.modules = {"synthesis": synthesis, "mapping": mapping}
        return g

    def discriminator(self, *, resolution: int, img_channels: int, channel_base: int, channel_max: int,
                      num_fp16_res: int, conv_clamp: Any, mbstd_group_size: int) -> Module:  # fmt: skip
        log2 = int(np.log2(resolution))
        block_res = [2**i for i in range(log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in block_res + [4]}
        fp16_res = max(2 ** (log2 + 1 - num_fp16_res), 8)
        d = self.module(
            "Discriminator", (),
            {"channel_base": channel_base, "channel_max": channel_max, "num_fp16_res": num_fp16_res,
             "conv_clamp": conv_clamp, "block_kwargs": {}, "mapping_kwargs": {},
             "epilogue_kwargs": {"mbstd_group_size": mbstd_group_size}, "c_dim": 0, "img_resolution": resolution,
             "img_channels": img_channels},
            {"c_dim": 0, "img_resolution": resolution, "img_resolution_log2": log2, "img_channels": img_channels,
             "block_resolutions": block_res},
        )  # fmt: skip
        layer_idx = 0
        lrelu = {"activation": "lrelu"}
        for res in block_res:
            in_ch = channels[res] if res < resolution else 0
            tmp, out = channels[res], channels[res // 2]
            use_fp16 = res >= fp16_res
            block = self.module(
                "DiscriminatorBlock", (in_ch, tmp, out),
                {"resolution": res, "first_layer_idx": layer_idx, "use_fp16": use_fp16,
                 "img_channels": img_channels, "architecture": "resnet", "conv_clamp": conv_clamp},
                {"in_channels": in_ch, "resolution": res, "img_channels": img_channels,
                 "first_layer_idx": layer_idx, "architecture": "resnet", "use_fp16": use_fp16,
                 "channels_last": False, "num_layers": 4 if in_ch == 0 else 3},
            )  # fmt: skip
            block.buffers = {"resample_filter": self.resample_filter()}
            common = {"trainable": True, "conv_clamp": conv_clamp, "channels_last": False}
            down = {"down": 2, "trainable": True, "resample_filter": list(_FIR)}
            if in_ch == 0:
                block.modules["fromrgb"] = self.conv2d(
                    img_channels, tmp, 1, {"kernel_size": 1, **lrelu, **common}, activation="lrelu")
            block.modules["conv0"] = self.conv2d(tmp, tmp, 3, {"kernel_size": 3, **lrelu, **common}, activation="lrelu")
            block.modules["conv1"] = self.conv2d(
                tmp, out, 3, {"kernel_size": 3, **lrelu, **down, "conv_clamp": conv_clamp, "channels_last": False},
                activation="lrelu", down=2)
            block.modules["skip"] = self.conv2d(
                tmp, out, 1, {"kernel_size": 1, "bias": False, **down, "channels_last": False},
                activation="linear", down=2, bias=False)  # fmt: skip
            layer_idx += block.attrs["num_layers"]
            d.modules[f"b{res}"] = block
        c4 = channels[4]
        epilogue = self.module(
            "DiscriminatorEpilogue", (c4,),
            {"cmap_dim": 0, "resolution": 4, "mbstd_group_size": mbstd_group_size, "img_channels": img_channels,
             "architecture": "resnet", "conv_clamp": conv_clamp},
            {"in_channels": c4, "cmap_dim": 0, "resolution": 4, "img_channels": img_channels,
             "architecture": "resnet"},
        )  # fmt: skip
        mbstd = {"group_size": mbstd_group_size, "num_channels": 1}
        epilogue.modules = {
            "mbstd": self.module("MinibatchStdLayer", (), dict(mbstd), dict(mbstd)),
            "conv": self.conv2d(
                c4 + 1, c4, 3, {"kernel_size": 3, **lrelu, "conv_clamp": conv_clamp}, activation="lrelu"),
            "fc": self.fc(c4 * 16, c4, dict(lrelu), activation="lrelu"),
            "out": self.fc(c4, 1, {}),
        }  # fmt: skip
        d.modules["b4"] = epilogue
        return d


def write_snapshot(
    path: str | Path,
    *,
    z_dim: int = 512,
    w_dim: int = 512,
    mapping_layers: int = 8,
    resolution: int = 1024,
    img_channels: int = 3,
    channel_base: int = 32768,
    channel_max: int = 512,
    num_fp16_res: int = 4,
    conv_clamp: int | None = 256,
    d_channel_base: int | None = None,
    d_channel_max: int | None = None,
    mbstd_group_size: int = 4,
    seed: int = 0,
    module_src: str = MODULE_SRC,
) -> dict[str, dict[str, tuple[int, ...]]]:
    """Writes a random ``{'training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe': None}`` snapshot pickle.

    Defaults: config-f FFHQ-1024 as trained with ADA (~360 MB). ``d_channel_base``/``d_channel_max`` default
    to the generator's. ``G`` and ``G_ema`` share shapes but have different random values.

    Returns:
      ``{'G': {name: shape}, 'D': ..., 'G_ema': ...}``: every ``state_dict`` name and shape, in order.
    """
    synthesis_kwargs = {"channel_base": channel_base, "channel_max": channel_max, "num_fp16_res": num_fp16_res,
                        "conv_clamp": conv_clamp, "architecture": "skip"}  # fmt: skip
    g_kwargs = dict(z_dim=z_dim, w_dim=w_dim, mapping_layers=mapping_layers, resolution=resolution,
                    img_channels=img_channels, synthesis_kwargs=synthesis_kwargs)  # fmt: skip
    nets = {
        "G": _Builder(seed * 3, module_src).generator(**g_kwargs),
        "D": _Builder(seed * 3 + 1, module_src).discriminator(
            resolution=resolution, img_channels=img_channels, channel_base=d_channel_base or channel_base,
            channel_max=d_channel_max or channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
            mbstd_group_size=mbstd_group_size),
        "G_ema": _Builder(seed * 3 + 2, module_src).generator(**g_kwargs),
    }  # fmt: skip
    snapshot = {
        "training_set_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "path": "datasets/random.zip",
                                "use_labels": False, "max_size": 70000, "xflip": True, "resolution": resolution},
        **nets,
        "augment_pipe": None,
    }  # fmt: skip
    with open(path, "wb") as f:
        RefPickler(f, protocol=4).dump(snapshot)
    return {name: net.state_shapes() for name, net in nets.items()}


def main() -> None:
    """CLI: write a random config-f snapshot (or a smaller one) to a path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shapes = write_snapshot(args.path, resolution=args.resolution, seed=args.seed)
    n = sum(math.prod(s) for net in shapes.values() for s in net.values())
    print(f"{args.path}: {args.path.stat().st_size / 1e6:.1f} MB, {n / 1e6:.1f} M float32 values")


if __name__ == "__main__":
    main()

"""The safe weight-file readers of ``ports/``: fixture structure, torch formats, refusals and bad files."""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import require_shared
from tools import torch_writers as tw
from tools.nvidia_pkl_writer import write_snapshot

from magec_jax.errors import FileFormatError
from ports.convert import CONVERTERS
from ports.detect import detect_format
from ports.nvidia import PersistentModule, load_nvidia_pkl, load_tf_pkl
from ports.pickles import NUMPY_GLOBALS, plain, restricted_load
from ports.torch_files import TensorSpec, load_torch, torch_globals

NVIDIA = ("fixtures", "stylegan2_nvidia")
ROSINALITY = ("fixtures", "stylegan2_rosinality")


def _assert_one_line(err: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}: "), text
    for fragment in fragments:
        assert fragment in text, text


def _arrays_ok(params: dict) -> None:
    for name, value in params.items():
        assert isinstance(value, np.ndarray) and value.flags.c_contiguous and not value.flags.writeable, name


# ------------------------------------------------------------------------------------------------------------
# NVIDIA fixtures: names and shapes from the README.


def _expected_generator(z_dim: int, w_dim: int, layers: int, channels: dict[int, int]) -> dict[str, tuple]:
    """The G state_dict of NVIDIA networks.py (skip architecture, c_dim 0), in state_dict order."""
    out: dict[str, tuple] = {}

    def layer(prefix: str, cin: int, cout: int, res: int) -> None:
        out.update({f"{prefix}.weight": (cout, cin, 3, 3), f"{prefix}.noise_strength": (), f"{prefix}.bias": (cout,),
                    f"{prefix}.resample_filter": (4, 4), f"{prefix}.noise_const": (res, res),
                    f"{prefix}.affine.weight": (cin, w_dim), f"{prefix}.affine.bias": (cin,)})  # fmt: skip

    def torgb(prefix: str, cin: int) -> None:
        out.update({f"{prefix}.weight": (3, cin, 1, 1), f"{prefix}.bias": (3,),
                    f"{prefix}.affine.weight": (cin, w_dim), f"{prefix}.affine.bias": (cin,)})  # fmt: skip

    for res, cout in channels.items():
        b = f"synthesis.b{res}"
        if res == 4:
            out[f"{b}.const"] = (cout, 4, 4)
        out[f"{b}.resample_filter"] = (4, 4)
        if res > 4:
            layer(f"{b}.conv0", channels[res // 2], cout, res)
        layer(f"{b}.conv1", cout, cout, res)
        torgb(f"{b}.torgb", cout)
    out["mapping.w_avg"] = (w_dim,)
    features = [z_dim] + [w_dim] * layers
    for i in range(layers):
        out[f"mapping.fc{i}.weight"] = (features[i + 1], features[i])
        out[f"mapping.fc{i}.bias"] = (features[i + 1],)
    return out


@pytest.mark.parametrize(
    "name, z_dim, w_dim, layers, channels, clamp",
    [
        ("ada32", 64, 64, 8, {4: 64, 8: 64, 16: 64, 32: 32}, None),
        ("ada64c", 32, 48, 2, {4: 48, 8: 48, 16: 48, 32: 48, 64: 32}, 2),
    ],
)
def test_nvidia_snapshot_structure(name, z_dim, w_dim, layers, channels, clamp):
    path = require_shared(*NVIDIA, f"{name}.pkl")
    snap = load_nvidia_pkl(path)
    assert list(snap) == ["training_set_kwargs", "G", "D", "G_ema", "augment_pipe"]
    assert snap["augment_pipe"] is None and type(snap["training_set_kwargs"]) is dict
    assert snap["training_set_kwargs"]["resolution"] == max(channels)
    expected = _expected_generator(z_dim, w_dim, layers, channels)
    g, g_ema = snap["G"], snap["G_ema"]
    for net in (g, g_ema):
        assert isinstance(net, PersistentModule) and net.class_name == "Generator" and net.version == 6
        assert {k: v.shape for k, v in net.params.items()} == expected
        assert list(net.params) == list(expected)
        assert all(v.dtype == np.float32 for v in net.params.values())
        _arrays_ok(net.params)
    kwargs = g_ema.init_kwargs
    assert type(kwargs) is dict and type(kwargs["synthesis_kwargs"]) is dict
    assert (kwargs["z_dim"], kwargs["w_dim"], kwargs["mapping_kwargs"]) == (z_dim, w_dim, {"num_layers": layers})
    assert kwargs["synthesis_kwargs"]["conv_clamp"] == clamp
    # Buffers are shared between G and G_ema; every parameter differs (G is the perturbed copy).
    for key in expected:
        same = np.array_equal(g.params[key], g_ema.params[key])
        assert same == key.endswith(("resample_filter", "noise_const", "w_avg")), key
    f = np.array([1, 3, 3, 1], np.float32)
    np.testing.assert_array_equal(g_ema.params["synthesis.b8.resample_filter"], np.outer(f, f) / 64)
    conv0 = g_ema.modules["synthesis"].modules["b8"].modules["conv0"]
    assert conv0.class_name == "SynthesisLayer" and conv0.init_args == (channels[4], channels[8])
    assert conv0.attrs["up"] == 2 and conv0.attrs["conv_clamp"] == clamp
    assert isinstance(conv0.attrs["act_gain"], np.float64)
    assert conv0.params["affine.weight"] is g_ema.params["synthesis.b8.conv0.affine.weight"]
    fc0 = g_ema.modules["mapping"].modules["fc0"]
    assert fc0.attrs["weight_gain"] == np.float64(0.01 / np.sqrt(z_dim)) and fc0.attrs["bias_gain"] == 0.01
    assert g_ema.module_src_sha256 == snap["D"].module_src_sha256  # one (never executed) source string


def test_nvidia_discriminator_names():
    d = load_nvidia_pkl(require_shared(*NVIDIA, "ada32.pkl"))["D"]
    shapes = {k: v.shape for k, v in d.params.items()}
    assert shapes["b32.fromrgb.weight"] == (8, 3, 1, 1) and "b16.fromrgb.weight" not in shapes
    for res, (cin, cout) in {32: (8, 16), 16: (16, 16), 8: (16, 16)}.items():
        assert shapes[f"b{res}.conv0.weight"] == (cin, cin, 3, 3)
        assert shapes[f"b{res}.conv1.weight"] == (cout, cin, 3, 3)
        assert shapes[f"b{res}.skip.weight"] == (cout, cin, 1, 1) and f"b{res}.skip.bias" not in shapes
        assert shapes[f"b{res}.resample_filter"] == (4, 4)
    assert shapes["b4.conv.weight"] == (16, 17, 3, 3)
    assert (shapes["b4.fc.weight"], shapes["b4.out.weight"], shapes["b4.out.bias"]) == ((16, 256), (1, 16), (1,))
    assert d.modules["b4"].modules["mbstd"].attrs["group_size"] == 4


def test_state_dict_pt_equals_pickle_g_ema():
    state = load_torch(require_shared(*NVIDIA, "ada32_G_ema_state_dict.pt"))
    g_ema = load_nvidia_pkl(require_shared(*NVIDIA, "ada32.pkl"))["G_ema"]
    assert type(state) is dict and len(state) == 87 and list(state) == list(g_ema.params)
    for key, value in state.items():
        ref = g_ema.params[key]
        assert value.dtype == ref.dtype and value.shape == ref.shape
        assert value.tobytes() == ref.tobytes(), key  # bit-exact
    _arrays_ok(state)


# TF -> PyTorch, as the fixture README's table (legacy.py) has it: (regex on TF name, torch name, transform).
_CONV = lambda w: w.transpose(3, 2, 0, 1)  # noqa: E731
_G_RULES = [
    (r"mapping/Dense(\d+)/weight", r"mapping.fc\1.weight", np.transpose),
    (r"mapping/Dense(\d+)/bias", r"mapping.fc\1.bias", None),
    (r"dlatent_avg", "mapping.w_avg", None),
    (r"synthesis/4x4/Const/const", "synthesis.b4.const", lambda c: c[0]),
    (r"synthesis/(\d+)x\d+/Conv0_up/weight", r"synthesis.b\1.conv0.weight", lambda w: _CONV(w[::-1, ::-1])),
    (r"synthesis/(\d+)x\d+/(Conv|Conv1|ToRGB)/weight", r"synthesis.b\1.\2.weight", _CONV),
    (r"synthesis/(\d+)x\d+/(\w+)/mod_weight", r"synthesis.b\1.\2.affine.weight", np.transpose),
    (r"synthesis/(\d+)x\d+/(\w+)/mod_bias", r"synthesis.b\1.\2.affine.bias", lambda b: b + np.float32(1)),
    (r"synthesis/(\d+)x\d+/(\w+)/(noise_strength|bias)", r"synthesis.b\1.\2.\3", None),
]
_D_RULES = [
    (r"(\d+)x\d+/FromRGB/(weight|bias)", r"b\1.fromrgb.\2", {"weight": _CONV}),
    (r"(\d+)x\d+/Conv0/(weight|bias)", r"b\1.conv0.\2", {"weight": _CONV}),
    (r"(\d+)x\d+/Conv1_down/(weight|bias)", r"b\1.conv1.\2", {"weight": _CONV}),
    (r"(\d+)x\d+/Skip/weight", r"b\1.skip.weight", _CONV),
    (r"4x4/Conv/(weight|bias)", r"b4.conv.\1", {"weight": _CONV}),
    (r"4x4/Dense0/(weight|bias)", r"b4.fc.\1", {"weight": np.transpose}),
    (r"Output/(weight|bias)", r"b4.out.\1", {"weight": np.transpose}),
]
_TF_LAYER = {"Conv": "conv1", "Conv0_up": "conv0", "Conv1": "conv1", "ToRGB": "torgb"}


def _tf_to_torch(variables: dict[str, np.ndarray], rules: list) -> dict[str, np.ndarray]:
    out = {}
    for name, value in variables.items():
        if name == "lod":
            continue
        noise = re.fullmatch(r"synthesis/noise(\d+)", name)
        if noise:
            k = int(noise.group(1))
            res, layer = (4, "conv1") if k == 0 else (2 ** ((k + 5) // 2), "conv0" if k % 2 else "conv1")
            out[f"synthesis.b{res}.{layer}.noise_const"] = value[0, 0]
            continue
        for pattern, target, transform in rules:
            m = re.fullmatch(pattern, name)
            if m:
                key = m.expand(target)
                for tf_layer, pt_layer in _TF_LAYER.items():
                    key = key.replace(f".{tf_layer}.", f".{pt_layer}.")
                if isinstance(transform, dict):
                    transform = transform.get(key.rsplit(".", 1)[1])
                out[key] = transform(value) if transform else value
                break
        else:
            raise AssertionError(f"no rule for TF variable {name}")
    return out


def test_tf_pickle_equals_pytorch_snapshot():
    tf = load_tf_pkl(require_shared(*NVIDIA, "ada32_tf.pkl"))
    snap = load_nvidia_pkl(require_shared(*NVIDIA, "ada32.pkl"))
    assert list(tf) == ["G", "D", "Gs"]
    gs = tf["Gs"]
    assert (gs.name, gs.build_func_name, gs.version) == ("Gs", "G_main", 4)
    assert list(gs.components) == ["synthesis", "mapping"]
    assert gs.components["synthesis"].build_func_name == "G_synthesis_stylegan2"
    assert gs.components["mapping"].static_kwargs["dlatent_broadcast"] == 8
    mapping_kwargs = dict(gs.components["mapping"].static_kwargs)
    assert mapping_kwargs.pop("dlatent_broadcast") == 8 and gs.static_kwargs == mapping_kwargs
    assert gs.variables["lod"].shape == () and gs.variables["dlatent_avg"].shape == (64,)
    syn = gs.components["synthesis"].variables
    assert list(syn)[:8] == [f"noise{i}" for i in range(7)] + ["4x4/Const/const"]
    assert syn["32x32/Conv0_up/weight"].shape == (3, 3, 64, 32) and syn["32x32/ToRGB/mod_weight"].shape == (64, 32)
    assert syn["8x8/Conv0_up/noise_strength"].shape == () and syn["noise6"].shape == (1, 1, 32, 32)
    for tf_name, pt_name in (("Gs", "G_ema"), ("G", "G")):
        net = tf[tf_name]
        flat = dict(net.variables)
        for comp, sub in net.components.items():
            flat.update((f"{comp}/{k}", v) for k, v in sub.variables.items())
        converted = _tf_to_torch(flat, _G_RULES)
        target = {k: v for k, v in snap[pt_name].params.items() if not k.endswith("resample_filter")}
        assert sorted(converted) == sorted(target)
        for key, value in converted.items():
            assert value.dtype == np.float32 and np.array_equal(value, target[key]), (tf_name, key)
    d_converted = _tf_to_torch(tf["D"].variables, _D_RULES)
    d_target = {k: v for k, v in snap["D"].params.items() if not k.endswith("resample_filter")}
    assert sorted(d_converted) == sorted(d_target)
    assert all(np.array_equal(v, d_target[k]) for k, v in d_converted.items())


def test_rosinality_checkpoints():
    g32 = load_torch(require_shared(*ROSINALITY, "g32.pt"))
    assert list(g32) == ["g_ema", "g", "latent_avg"] and g32["latent_avg"].shape == (64,)
    ema, g = g32["g_ema"], g32["g"]
    assert list(ema) == list(g)
    shapes = {k: v.shape for k, v in ema.items()}
    for k in range(1, 9):
        assert shapes[f"style.{k}.weight"] == (64, 64) and shapes[f"style.{k}.bias"] == (64,)
    assert shapes["input.input"] == (1, 64, 4, 4) and shapes["conv1.conv.weight"] == (1, 64, 64, 3, 3)
    assert all(shapes[f"convs.{k}.conv.weight"] == (1, 64, 64, 3, 3) for k in range(6))
    assert all(shapes[f"convs.{k}.conv.blur.kernel"] == (4, 4) for k in (0, 2, 4))
    assert shapes["to_rgbs.2.conv.weight"] == (1, 3, 64, 1, 1) and shapes["to_rgb1.bias"] == (1, 3, 1, 1)
    assert shapes["conv1.noise.weight"] == (1,) and shapes["noises.noise_6"] == (1, 1, 32, 32)
    assert "style.9.weight" not in shapes and "convs.6.conv.weight" not in shapes
    assert not np.array_equal(ema["style.1.weight"], g["style.1.weight"])
    assert not np.array_equal(ema["noises.noise_0"], g["noises.noise_0"])
    np.testing.assert_array_equal(ema["convs.0.conv.blur.kernel"], g["convs.0.conv.blur.kernel"])
    _arrays_ok(ema)
    cm1 = load_torch(require_shared(*ROSINALITY, "g64_cm1.pt"))
    assert list(cm1) == ["g_ema", "latent_avg"]
    assert cm1["g_ema"]["convs.6.conv.weight"].shape == (1, 32, 64, 3, 3)
    assert cm1["g_ema"]["convs.7.conv.weight"].shape == (1, 32, 32, 3, 3)
    assert cm1["g_ema"]["convs.0.conv.modulation.weight"].shape == (64, 48) and "style.3.weight" not in cm1["g_ema"]


# ------------------------------------------------------------------------------------------------------------
# Synthetic torch files: dtypes, strides, offsets, shared storages, both formats.

_WRITERS = {"zip": tw.write_torch_zip, "legacy": tw.write_torch_legacy}


def _dtype_cases(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "float32": rng.standard_normal((3, 4)).astype(np.float32),
        "float64": rng.standard_normal(5),
        "float16": rng.standard_normal((2, 3)).astype(np.float16),
        "int64": rng.integers(-(2**40), 2**40, 6),
        "int32": rng.integers(-1000, 1000, (2, 2)).astype(np.int32),
        "int16": rng.integers(-1000, 1000, 3).astype(np.int16),
        "int8": rng.integers(-100, 100, 3).astype(np.int8),
        "uint8": rng.integers(0, 255, 7).astype(np.uint8),
        "bool": rng.integers(0, 2, 4).astype(bool),
        "complex64": (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64),
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
    }


@pytest.mark.parametrize("fmt", sorted(_WRITERS))
def test_torch_dtypes_roundtrip(tmp_path, fmt):
    arrays = _dtype_cases(np.random.default_rng(0))
    bf16_source = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
    obj = {name: tw.tensor(a, parameter=(name == "float32")) for name, a in arrays.items()}
    obj["bfloat16"] = tw.Tensor(tw.Storage(tw.to_bfloat16_bits(bf16_source), bfloat16=True), shape=(4,))
    obj["nested"] = collections.OrderedDict(a=[tw.tensor(arrays["int8"]), 3], b=("x", 1.5))
    path = tmp_path / f"dtypes.{fmt}.pt"
    _WRITERS[fmt](path, obj)
    loaded = load_torch(path)
    for name, a in arrays.items():
        assert loaded[name].dtype == a.dtype and loaded[name].shape == a.shape, name
        np.testing.assert_array_equal(loaded[name], a)
    bf16 = loaded["bfloat16"]
    assert bf16.dtype == np.float32
    np.testing.assert_array_equal(bf16, (bf16_source.view(np.uint32) & 0xFFFF0000).view(np.float32))
    assert type(loaded["nested"]) is dict and loaded["nested"]["b"] == ("x", 1.5)
    np.testing.assert_array_equal(loaded["nested"]["a"][0], arrays["int8"])
    specs = load_torch(path, arrays=False)
    assert specs["float16"] == TensorSpec((2, 3), np.dtype(np.float16))
    assert specs["bfloat16"] == TensorSpec((4,), np.dtype(np.float32))


@pytest.mark.parametrize("fmt", sorted(_WRITERS))
def test_torch_strides_offsets_shared_storage(tmp_path, fmt):
    base = np.arange(24, dtype=np.float32)
    st = tw.Storage(base)
    obj = {
        "full": tw.Tensor(st, shape=(4, 6)),
        "rows": tw.Tensor(st, offset=6, shape=(2, 6)),  # contiguous, offset
        "transposed": tw.Tensor(st, shape=(6, 4), stride=(1, 6)),  # full.T
        "strided": tw.Tensor(st, offset=1, shape=(3, 2), stride=(8, 3)),
        "expanded": tw.Tensor(st, offset=5, shape=(3, 2), stride=(0, 1)),
        "unit_dim": tw.Tensor(st, offset=2, shape=(1, 3), stride=(99, 1)),
    }
    if fmt == "legacy":
        obj["view"] = tw.Tensor(tw.StorageSlice(st, 10, 8), offset=2, shape=(2, 3))
    path = tmp_path / f"strides.{fmt}.pt"
    _WRITERS[fmt](path, obj)
    out = load_torch(path)
    full = base.reshape(4, 6)
    np.testing.assert_array_equal(out["full"], full)
    np.testing.assert_array_equal(out["rows"], full[1:3])
    np.testing.assert_array_equal(out["transposed"], full.T)
    np.testing.assert_array_equal(out["strided"], np.lib.stride_tricks.as_strided(base[1:], (3, 2), (32, 12)))
    np.testing.assert_array_equal(out["expanded"], np.broadcast_to(base[5:7], (3, 2)))
    np.testing.assert_array_equal(out["unit_dim"], base[2:5][None])
    if fmt == "legacy":
        np.testing.assert_array_equal(out["view"], base[12:18].reshape(2, 3))
    for value in out.values():
        assert value.flags.c_contiguous and not value.flags.writeable
    # Contiguous tensors over one storage share its memory (it is read once); the others are copies.
    assert np.shares_memory(out["full"], out["rows"]) and np.shares_memory(out["full"], out["unit_dim"])
    assert not np.shares_memory(out["full"], out["transposed"])
    bomb = tmp_path / f"bomb.{fmt}.pt"
    _WRITERS[fmt](bomb, {"x": tw.Tensor(st, shape=(2**20, 2**20), stride=(0, 0))})
    with pytest.raises(FileFormatError) as err:
        load_torch(bomb)
    _assert_one_line(err, bomb, "would expand its storage of 24 elements")


def test_torch_zip_untyped_storage_v3_big_endian_namespace(tmp_path):
    values = np.array([1.5, -2.0, 4.25, 8.0], np.float32)
    untyped = tw.Storage(values.view(np.uint8), untyped=True)
    args = tw.NewObj("argparse.Namespace", state={"size": 1024, "lr": 0.002})
    obj = {"v3": tw.Tensor(untyped, offset=1, shape=(3,), dtype="float32"), "args": args}
    tw.write_torch_zip(tmp_path / "v3.pt", obj, prefix="v3")
    out = load_torch(tmp_path / "v3.pt")
    np.testing.assert_array_equal(out["v3"], values[1:])
    assert out["args"] == {"size": 1024, "lr": 0.002}
    big = {"w": tw.tensor(np.arange(5, dtype=np.float64)), "i": tw.tensor(np.array([1, -2], np.int32))}
    tw.write_torch_zip(tmp_path / "big.pt", big, byteorder="big")
    out = load_torch(tmp_path / "big.pt")
    np.testing.assert_array_equal(out["w"], np.arange(5.0))
    np.testing.assert_array_equal(out["i"], [1, -2])
    assert out["w"].dtype.isnative


def test_nvidia_writer_mirrors_fixture_layout(tmp_path):
    fixture = load_nvidia_pkl(require_shared(*NVIDIA, "ada32.pkl"))
    path = tmp_path / "ada32_like.pkl"
    shapes = write_snapshot(
        path, z_dim=64, w_dim=64, resolution=32, channel_base=1024, channel_max=64, num_fp16_res=0,
        conv_clamp=None, d_channel_base=256, d_channel_max=16, seed=3,
    )  # fmt: skip
    written = load_nvidia_pkl(path)
    assert detect_format(path) == "nvidia-pkl"

    def compare(a: PersistentModule, b: PersistentModule, where: str) -> None:
        assert (a.class_name, a.init_args, a.init_kwargs) == (b.class_name, b.init_args, b.init_kwargs), where
        assert a.attrs == b.attrs and list(a.attrs) == list(b.attrs), where
        assert [(k, v.shape) for k, v in a.params.items()] == [(k, v.shape) for k, v in b.params.items()], where
        assert list(a.modules) == list(b.modules), where
        for name in a.modules:
            compare(a.modules[name], b.modules[name], f"{where}.{name}")

    for net in ("G", "D", "G_ema"):
        compare(written[net], fixture[net], net)
        assert {k: v.shape for k, v in written[net].params.items()} == shapes[net]
    assert not np.array_equal(written["G"].params["mapping.fc0.weight"], written["G_ema"].params["mapping.fc0.weight"])


# ------------------------------------------------------------------------------------------------------------
# Refusals: nothing named by a file runs.


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _touch_cmd(target: Path) -> str:
    return f"touch {target}"


def test_raw_pickle_with_os_system_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Evil(os.system, _touch_cmd(target))}, protocol=4))
    system = f"{os.system.__module__}.system"  # 'posix.system' (or 'nt.system')
    for load in (load_nvidia_pkl, load_tf_pkl):
        with pytest.raises(FileFormatError) as err:
            load(path)
        _assert_one_line(err, path, f"refuses global '{system}'", "may only rebuild arrays")
    with pytest.raises(FileFormatError) as err:
        restricted_load(path.read_bytes(), path=path, allowed=NUMPY_GLOBALS)
    _assert_one_line(err, path, f"refuses global '{system}'")
    with pytest.raises(FileFormatError) as err:
        detect_format(path)
    _assert_one_line(err, path, "not a recognised checkpoint", system)
    assert not target.exists()


@pytest.mark.parametrize("fmt", sorted(_WRITERS))
def test_torch_file_with_malicious_pickle_is_refused(tmp_path, fmt):
    target = tmp_path / "pwned"
    obj = {"weight": tw.tensor(np.ones(3, np.float32)), "x": _Evil(os.system, _touch_cmd(target))}
    path = tmp_path / f"evil.{fmt}.pt"
    _WRITERS[fmt](path, obj)
    for read in (load_torch, lambda p: load_torch(p, arrays=False), detect_format):
        with pytest.raises(FileFormatError) as err:
            read(path)
        _assert_one_line(err, path, "refuses global", "system")
    assert not target.exists()


def test_malicious_global_inside_nvidia_structure_is_refused(tmp_path, monkeypatch):
    from tools import nvidia_pkl_writer

    target = tmp_path / "pwned"
    real_reduce = nvidia_pkl_writer.Module.__reduce__

    def reduce_with_payload(self):
        func, (meta,) = real_reduce(self)
        if self.class_name == "ToRGBLayer":  # deep inside G: G.synthesis.b8.torgb
            meta["state"]["weight_gain"] = _Evil(os.system, _touch_cmd(target))
        return func, (meta,)

    monkeypatch.setattr(nvidia_pkl_writer.Module, "__reduce__", reduce_with_payload)
    path = tmp_path / "evil_snapshot.pkl"
    write_snapshot(path, z_dim=8, w_dim=8, mapping_layers=1, resolution=8, channel_base=64, channel_max=8)
    assert detect_format(path) == "nvidia-pkl"  # it looks like a snapshot...
    with pytest.raises(FileFormatError) as err:  # ...but loading refuses the payload
        load_nvidia_pkl(path)
    _assert_one_line(err, path, "refuses global", "system")
    assert not target.exists()


def test_malicious_storage_stream_is_refused(tmp_path):
    """The payload hides in a nested ``_load_from_bytes`` legacy stream, not in the outer pickle."""
    target = tmp_path / "pwned"
    nested = tw.legacy_bytes(_Evil(os.system, _touch_cmd(target)))

    class _BadStorage:
        def __reduce__(self):
            return tw.Ref("torch.storage._load_from_bytes"), (nested,)

    path = tmp_path / "nested.pkl"
    path.write_bytes(tw.dumps({"w": _BadStorage()}, protocol=4))
    with pytest.raises(FileFormatError) as err:
        load_nvidia_pkl(path)
    _assert_one_line(err, path, "refuses global", "system")
    assert not target.exists()


@pytest.mark.parametrize("name", ["builtins.eval", "builtins.exec", "builtins.getattr", "builtins.__import__",
                                  "subprocess.call", "__builtin__.eval", "torch.load"])  # fmt: skip
def test_dangerous_builtins_are_refused(tmp_path, name):
    target = tmp_path / "pwned"
    arg = {"builtins.getattr": None, "builtins.__import__": "os"}.get(name, f"open({str(target)!r}, 'w')")
    path = tmp_path / "evil.pkl"
    path.write_bytes(tw.dumps({"G_ema": _Evil(tw.Ref(name), arg)}, protocol=2))
    for load in (load_nvidia_pkl, load_tf_pkl):
        with pytest.raises(FileFormatError) as err:
            load(path)
        _assert_one_line(err, path, f"refuses global {name!r}")
    assert not target.exists()


def test_numpy_globals_cannot_smuggle_objects(tmp_path):
    path = tmp_path / "objects.pkl"
    path.write_bytes(pickle.dumps(np.array([print, 1], dtype=object), protocol=4))
    with pytest.raises(FileFormatError) as err:
        restricted_load(path.read_bytes(), path=path, allowed=NUMPY_GLOBALS)
    _assert_one_line(err, path, "object")
    # numpy's dtype state carries flags that would mark a void dtype as holding object pointers: ignored.
    class _FlaggedVoid:
        def __reduce__(self):
            return tw.Ref("numpy.dtype"), ("V8", False, True), (3, "|", None, None, None, 8, 1, 0x3F)

    raw = tw.dumps(_FlaggedVoid(), protocol=2)
    dtype = plain(restricted_load(raw, path=path, allowed=NUMPY_GLOBALS), path)
    assert dtype == np.dtype("V8") and not dtype.hasobject
    raw = pickle.dumps({"a": np.arange(6.0).reshape(2, 3).T})
    arrays = plain(restricted_load(raw, path=path, allowed=NUMPY_GLOBALS), path)
    np.testing.assert_array_equal(arrays["a"], np.arange(6.0).reshape(2, 3).T)


def test_build_cannot_alter_allowed_objects(tmp_path):
    """BUILD sets attributes on the stack's top: on allowed globals it must fail, not leak into later loads."""
    path = tmp_path / "build.pkl"
    attacks = [
        b"ctorch\nFloatStorage\n}X\x04\x00\x00\x00diskK\x01sb.",  # __dict__ of a shared element type
        b"ctorch\nFloatStorage\nN}X\x04\x00\x00\x00diskK\x01s\x86b.",  # slot state of it
        b"cnumpy.core.multiarray\nscalar\nN}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86b.",  # a builder
        b"ccollections\nOrderedDict\nN}X\x05\x00\x00\x00itemsK\x01s\x86b.",  # a stand-in class
        b"ctorch\nSize\nN}X\x05\x00\x00\x00countK\x01s\x86b.",  # a builtin type
    ]
    for body in attacks:
        path.write_bytes(b"\x80\x02" + body)
        with pytest.raises(FileFormatError) as err:
            restricted_load(path.read_bytes(), path=path, allowed=torch_globals(path))
        _assert_one_line(err, path, "truncated or corrupt pickle")
    out = load_torch(require_shared(*NVIDIA, "ada32_G_ema_state_dict.pt"))  # later loads are unaffected
    assert out["synthesis.b4.const"].dtype == np.float32


# ------------------------------------------------------------------------------------------------------------
# Bad files: one line naming the file.


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    ada32 = require_shared(*NVIDIA, "ada32.pkl").read_bytes()
    state_dict = require_shared(*NVIDIA, "ada32_G_ema_state_dict.pt").read_bytes()
    jpeg = sorted(require_shared("data", "celeba_hq").rglob("*.jpg"))[0]
    files = {
        "truncated": (tmp_path / "half.pkl", "truncated or corrupt pickle"),
        "truncated_zip": (tmp_path / "half.pt", "truncated or corrupt"),
        "jpeg": (jpeg, "not a torch/pickle checkpoint (a JPEG image)"),
        "text": (tmp_path / "notes.txt", "not a torch/pickle checkpoint (a text file)"),
        "empty": (tmp_path / "empty.pkl", "empty file"),
        "directory": (tmp_path, "is a directory"),
        "missing": (tmp_path / "missing.pkl", "no such file"),
    }
    files["truncated"][0].write_bytes(ada32[: len(ada32) // 2])
    files["truncated_zip"][0].write_bytes(state_dict[: len(state_dict) // 2])
    files["text"][0].write_text("weights: see https://example.com\n")
    files["empty"][0].write_bytes(b"")
    return files


# What each reader says about the truncated NVIDIA pickle / truncated torch zip, where that is not the default.
_OTHER_KIND = {
    (load_tf_pkl, "truncated"): "is a PyTorch stylegan2-ada snapshot",  # told by its first global
    (load_torch, "truncated"): "is a plain pickle, not a torch.save file",
    (load_nvidia_pkl, "truncated_zip"): "is a torch.save file",
    (load_tf_pkl, "truncated_zip"): "is a torch.save file",
}


@pytest.mark.parametrize("reader", [load_nvidia_pkl, load_tf_pkl, load_torch, detect_format])
def test_bad_files_give_one_line_naming_the_file(tmp_path, reader):
    for kind, (path, fragment) in _bad_files(tmp_path).items():
        if reader is detect_format and kind == "truncated":
            assert detect_format(path) == "nvidia-pkl"  # from the opcode stream's head; loading then fails
            continue
        with pytest.raises(FileFormatError) as err:
            reader(path)
        _assert_one_line(err, path, _OTHER_KIND.get((reader, kind), fragment))


def test_truncated_legacy_torch_file(tmp_path):
    path = tmp_path / "legacy.pt"
    tw.write_torch_legacy(path, {"w": tw.tensor(np.arange(100, dtype=np.float32))})
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(FileFormatError) as err:
        load_torch(path)
    _assert_one_line(err, path, "truncated or corrupt")


def test_checkpoint_of_another_kind(tmp_path):
    tf_pkl, pt_pkl = require_shared(*NVIDIA, "ada32_tf.pkl"), require_shared(*NVIDIA, "ada32.pkl")
    state_dict = require_shared(*NVIDIA, "ada32_G_ema_state_dict.pt")
    cases = [
        (load_nvidia_pkl, tf_pkl, "TensorFlow StyleGAN pickle"),
        (load_tf_pkl, pt_pkl, "PyTorch stylegan2-ada snapshot"),
        (load_nvidia_pkl, state_dict, "is a torch.save file"),
        (load_torch, pt_pkl, "plain pickle, not a torch.save file"),
    ]
    for reader, path, fragment in cases:
        with pytest.raises(FileFormatError) as err:
            reader(path)
        _assert_one_line(err, path, fragment)
    other = tmp_path / "classifier.pt"
    tw.write_torch_zip(other, {"backbone.weight": tw.tensor(np.ones(2, np.float32))})
    with pytest.raises(FileFormatError) as err:
        detect_format(other)
    _assert_one_line(err, other, "not a recognised checkpoint (a torch file with 1 keys: 'backbone.weight')")
    module = tmp_path / "model.pt"
    tw.write_torch_zip(module, {"model": _Evil(tw.Ref("torch.nn.modules.conv.Conv2d"), 3)})
    with pytest.raises(FileFormatError) as err:
        load_torch(module)
    _assert_one_line(err, module, "pickled torch.nn module", "model.state_dict()")
    numpy_pickle = tmp_path / "arrays.pkl"
    numpy_pickle.write_bytes(pickle.dumps({"a": np.zeros(2)}))
    with pytest.raises(FileFormatError) as err:
        load_nvidia_pkl(numpy_pickle)
    _assert_one_line(err, numpy_pickle, "not an NVIDIA network pickle")


# ------------------------------------------------------------------------------------------------------------
# Format detection.


def test_detect_fixture_formats():
    expected = {
        (*NVIDIA, "ada32.pkl"): "nvidia-pkl",
        (*NVIDIA, "ada64c.pkl"): "nvidia-pkl",
        (*NVIDIA, "ada32_tf.pkl"): "tf-pkl",
        (*NVIDIA, "ada32_G_ema_state_dict.pt"): "state-dict",
        (*ROSINALITY, "g32.pt"): "rosinality",
        (*ROSINALITY, "g64_cm1.pt"): "rosinality",
        ("data", "face_models", "faceres.json"): "tfjs-faceres",
        ("data", "face_models", "emotion.json"): "tfjs-emotion",
    }
    for parts, fmt in expected.items():
        assert detect_format(require_shared(*parts)) == fmt, parts
    assert set(expected.values()) <= set(CONVERTERS)


@pytest.mark.parametrize(
    "keys, fmt",
    [
        (["input_layer.0.weight", "input_layer.1.weight", "body.0.res_layer.1.weight"], "irse50"),
        (["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "fc.weight", "fc.bias"], "resnet50"),
        (["lin0.model.1.weight", "lin1.model.1.weight"], "lpips-vgg16"),
        (["features.0.weight", "features.0.bias", "features.2.weight"], "lpips-vgg16"),
        (["module.conv1.weight", "module.layer1.0.conv1.weight", "module.fc.weight"], "resnet50"),
        (["synthesis.b4.const", "mapping.fc0.weight"], "state-dict"),
    ],
)
@pytest.mark.parametrize("fmt_writer", sorted(_WRITERS))
def test_detect_torch_key_layouts(tmp_path, keys, fmt, fmt_writer):
    obj = {k: tw.tensor(np.zeros(2, np.float32)) for k in keys}
    if fmt == "irse50":
        obj = {"state_dict": obj}  # wrapped, as training checkpoints do
    path = tmp_path / "ckpt.pth"
    _WRITERS[fmt_writer](path, obj)
    assert detect_format(path) == fmt
    assert fmt in CONVERTERS


def test_detect_tfjs_json(tmp_path):
    path = tmp_path / "model.json"
    path.write_text('{"modelTopology": {"node": [{"name": "x/conv_dw_1/depthwise"}]}, "weightsManifest": []}')
    assert detect_format(path) == "tfjs-faceres"
    path.write_text('{"modelTopology": {"node": [{"name": "dense/MatMul"}]}, "weightsManifest": []}')
    with pytest.raises(FileFormatError) as err:
        detect_format(path)
    _assert_one_line(err, path, "neither faceres nor emotion")
    path.write_text('{"name": "package", "version": "1.0"}')
    with pytest.raises(FileFormatError) as err:
        detect_format(path)
    _assert_one_line(err, path, "without modelTopology/weightsManifest")


def test_namespace_stand_in_is_a_dict():
    raw = pickle.dumps(argparse.Namespace(a=1), protocol=2)
    out = plain(restricted_load(raw, path="args.pkl", allowed=torch_globals("args.pkl")), "args.pkl")
    assert out == {"a": 1}

"""Test helpers for the loss networks: the fixtures' synthetic state dicts and a minimal ``torch.save`` writer.

``make_state_dict`` is the generator printed in the fixture READMEs (``arcface_irse50``, ``resnet50_attr``),
checked here against the spec's sha256 of every tensor. ``write_torch_zip`` writes the zip format that
``torch.save`` produces (``archive/data.pkl`` with storages as persistent ids, ``archive/data/<key>`` raw
little-endian records), without torch, so that the converters can be tested on real torch-format files.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np


def make_state_dict(spec: dict) -> dict[str, np.ndarray]:
    """Rebuilds a fixture's synthetic state dict from its ``state_dict_spec.json`` (README generator)."""
    rng = np.random.default_rng(spec["seed"])
    sd = {}
    for name, shape, rule in spec["entries"]:
        kind, _, args = rule.partition("(")
        kw = {k: float(v) for k, v in (a.split("=") for a in args.rstrip(")").split(",") if a)}
        shape = tuple(shape)
        if kind == "zeros_int64":
            sd[name] = np.zeros(shape, np.int64)
        elif kind == "normal_fanin":
            fan_in = int(np.prod(shape[1:]))
            sd[name] = (rng.standard_normal(shape, dtype=np.float64) * (kw["gain"] / math.sqrt(fan_in))).astype(
                np.float32
            )
        elif kind == "normal":
            sd[name] = (kw["mean"] + kw["std"] * rng.standard_normal(shape, dtype=np.float64)).astype(np.float32)
        elif kind == "uniform":
            sd[name] = rng.uniform(kw["low"], kw["high"], size=shape).astype(np.float32)
        elif kind == "normal_unit_columns":  # every column (e.g. one queued MoCo key) of unit L2 norm
            q = rng.standard_normal(shape, dtype=np.float64)
            sd[name] = (q / np.sqrt((q * q).sum(axis=0))).astype(np.float32)
        else:
            raise ValueError(rule)
    return sd


def load_fixture_state_dict(spec_path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(spec, state_dict)``; asserts every tensor's sha256 equals the spec's."""
    spec = json.loads(Path(spec_path).read_text())
    sd = make_state_dict(spec)
    bad = [k for k, v in sd.items() if hashlib.sha256(v.tobytes()).hexdigest() != spec["sha256"][k]]
    assert not bad, f"rebuilt tensors differ from the spec's sha256: {bad[:3]}"
    return spec, sd


class _Global:
    """A global the pickle names (``torch._utils._rebuild_tensor_v2``) without it being importable here."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # the pickler requires a callable; only its name is written
        raise NotImplementedError


class _Storage:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage: _Storage):
        self.storage = storage

    def __reduce__(self):
        a = self.storage.array
        stride = tuple(s // a.itemsize for s in a.strides) if a.ndim else ()
        args = (self.storage, 0, tuple(a.shape), stride, False, OrderedDict())
        return _Global("torch._utils", "_rebuild_tensor_v2"), args


_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler, whose save() can be extended
    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            kind = _Global("torch", _STORAGE[obj.array.dtype])
            return ("storage", kind, obj.key, "cpu", int(obj.array.size))
        return None


def write_torch_zip(path: Path, obj: dict) -> Path:
    """Writes ``obj`` (dicts, at any depth, of float32/int64 numpy arrays) as ``torch.save`` would."""
    storages: list[_Storage] = []

    def wrap(x):
        if isinstance(x, dict):
            return OrderedDict((k, wrap(v)) for k, v in x.items())
        x = np.array(x, order="C")  # a copy; np.ascontiguousarray would turn a 0-d array into 1-d
        storage = _Storage(str(len(storages)), x)
        storages.append(storage)
        return _Tensor(storage)

    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(wrap(obj))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        for s in storages:
            zf.writestr(f"archive/data/{s.key}", s.array.astype(s.array.dtype.newbyteorder("<")).tobytes())
        zf.writestr("archive/version", "3\n")
    return path

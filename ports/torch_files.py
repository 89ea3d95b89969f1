"""Read ``torch.save`` files (``.pt``/``.pth``) with numpy and a restricted unpickler; torch is never imported.

Two on-disk formats exist:

* zip (torch >= 1.6): ``<dir>/data.pkl`` is a pickle whose tensors point, by persistent id
  ``('storage', torch.FloatStorage, key, location, numel)``, at raw little-endian records ``<dir>/data/<key>``.
* legacy: five pickles in a row -- the magic number 0x1950a86a20f9469cfc6c, the protocol 1001, ``sys_info``,
  the object (persistent ids ``('storage', type, key, location, numel, view_metadata)``) and the list of
  storage keys -- then, per key, an int64 element count and the raw data. NVIDIA network pickles embed one
  such stream per tensor, passed to ``torch.storage._load_from_bytes``.

Tensors come back as numpy arrays: C-contiguous, read-only (a tensor that views its storage contiguously
shares the storage's memory, and tensors that share a storage share it here too; ``np.array(x)`` gives a
writable copy), in native byte order, with torch's dtype except bfloat16, which is widened to float32.
``OrderedDict``s come back as plain dicts.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from numpy.lib.stride_tricks import as_strided

from magec_jax.errors import FileFormatError
from ports.pickles import (
    NUMPY_GLOBALS,
    REFUSAL,
    ZIP_MAGIC,
    CorruptData,
    PickledDict,
    check_file,
    describe_head,
    is_pickle_head,
    one_line,
    plain,
    read_head,
    restricted_load,
)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_MAX_EXPANSION = 64  # a strided tensor may hold at most this many times its storage's elements (plus 1 Mi)


@dataclasses.dataclass(frozen=True, slots=True)  # shared singletons: no __dict__ for a pickle's BUILD to edit
class Elem:
    """A torch element type: its name, its numpy dtype on disk, and whether it is bfloat16 (stored as uint16)."""

    name: str
    disk: np.dtype
    bfloat16: bool = False

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype of arrays of this type as returned (bfloat16 -> float32)."""
        return np.dtype(np.float32) if self.bfloat16 else self.disk

    def __setstate__(self, state: Any) -> None:
        """Refuses BUILD (dataclass slots would otherwise supply a __setstate__ that sets the fields)."""
        raise CorruptData("BUILD on a torch element type")


_ELEMS: dict[str, Elem] = {
    name: Elem(name, np.dtype(disk), name == "bfloat16")
    for name, disk in [
        ("float32", "f4"), ("float64", "f8"), ("float16", "f2"), ("bfloat16", "u2"), ("int64", "i8"),
        ("int32", "i4"), ("int16", "i2"), ("int8", "i1"), ("uint8", "u1"), ("bool", "?"),
        ("complex64", "c8"), ("complex128", "c16"),
    ]
}
# torch.<Name>Storage -> element type. UntypedStorage holds bytes; a tensor over it names its dtype (v3).
_STORAGE_TYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}  # fmt: skip
# torch.<dtype> globals (with torch's aliases), used by _rebuild_tensor_v3.
_DTYPE_ALIASES = {
    "float32": "float32", "float": "float32", "float64": "float64", "double": "float64",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64", "long": "int64",
    "int32": "int32", "int": "int32", "int16": "int16", "short": "int16", "int8": "int8", "uint8": "uint8",
    "bool": "bool", "complex64": "complex64", "cfloat": "complex64", "complex128": "complex128",
    "cdouble": "complex128",
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A tensor's shape and dtype, returned instead of its data by ``load_torch(..., arrays=False)``."""

    shape: tuple[int, ...]
    dtype: np.dtype


class Storage:
    """A flat torch storage: element type, element count, and its data once read (None before)."""

    __slots__ = ("elem", "numel", "data")

    def __init__(self, elem: Elem, numel: int):
        self.elem = elem
        self.numel = numel
        self.data: np.ndarray | None = None

    def fill(self, buf: bytes, offset: int, count: int, big_endian: bool = False) -> None:
        """Sets the data to ``count`` elements of ``buf`` from byte ``offset`` (a view when no conversion is needed)."""
        disk = self.elem.disk.newbyteorder(">") if big_endian else self.elem.disk
        if offset + count * disk.itemsize > len(buf):
            raise CorruptData(f"storage of {count} elements runs past the end of its data")
        arr = np.frombuffer(buf, dtype=disk, count=count, offset=offset) if count else np.empty(0, disk)
        self.data = _widen(arr, self.elem)

    def array(self, elem: Elem | None = None) -> np.ndarray | None:
        """The flat data as ``elem`` (default: the storage's own type; other types reinterpret the bytes)."""
        if self.data is None or elem is None or elem == self.elem:
            return self.data
        if self.elem.bfloat16 or self.data.nbytes % elem.disk.itemsize:
            raise CorruptData(f"cannot view a {self.elem.name} storage as {elem.name}")
        return _widen(self.data.view(elem.disk), elem)


class _StorageView:
    """A slice of a storage (legacy files' ``view_metadata``)."""

    __slots__ = ("base", "offset", "numel")

    def __init__(self, base: Storage, offset: int, numel: int):
        self.base, self.offset, self.numel = base, offset, numel

    @property
    def elem(self) -> Elem:
        """The element type of the underlying storage."""
        return self.base.elem

    def array(self, elem: Elem | None = None) -> np.ndarray | None:
        """The viewed part of the base storage's data."""
        data = self.base.array()
        if data is None:
            return None
        if self.offset < 0 or self.offset + self.numel > data.size:
            raise CorruptData("storage view runs past its storage")
        sliced = data[self.offset : self.offset + self.numel]
        if elem is None or elem == self.base.elem:
            return sliced
        raise CorruptData("a storage view cannot change its element type")


def _widen(arr: np.ndarray, elem: Elem) -> np.ndarray:
    """Disk array -> returned array: native byte order, bfloat16 widened to float32, read-only."""
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if elem.bfloat16:
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    arr.flags.writeable = False
    return arr


@dataclasses.dataclass
class _Load:
    """State of one file's load: its path, whether to read data, and tensors built before their data."""

    path: Path
    arrays: bool
    pending: int = 0
    globals: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _is_contiguous(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for n, st in zip(reversed(size), reversed(stride), strict=True):
        if n != 1 and st != expected:
            return False
        expected *= n
    return True


def _tensor(load: _Load, storage: Any, offset: Any, size: Any, stride: Any, elem: Elem | None = None) -> Any:
    """A tensor as a C-contiguous read-only array, or a TensorSpec when its storage has no data yet."""
    if not isinstance(storage, (Storage, _StorageView)):
        raise CorruptData(f"tensor storage is a {type(storage).__name__}")
    size, stride, offset = tuple(int(n) for n in size), tuple(int(s) for s in stride), int(offset)
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise CorruptData(f"bad tensor geometry (size {size}, stride {stride}, offset {offset})")
    elem = elem or storage.elem
    flat = storage.array(elem)
    if flat is None:
        load.pending += 1
        return TensorSpec(size, elem.dtype)
    n = math.prod(size)
    if n == 0:
        out = np.zeros(size, flat.dtype)
        out.flags.writeable = False
        return out
    last = offset + sum((n_i - 1) * s_i for n_i, s_i in zip(size, stride, strict=True))
    if last >= flat.size:
        raise CorruptData(f"tensor {size} (stride {stride}, offset {offset}) runs past its storage of {flat.size}")
    if _is_contiguous(size, stride):
        return flat[offset : offset + n].reshape(size)
    if n > _MAX_EXPANSION * flat.size + (1 << 20):  # stride-0 dims: a few bytes of file could ask for terabytes
        raise CorruptData(f"tensor {size} (stride {stride}) would expand its storage of {flat.size} elements")
    view = as_strided(flat[offset:], shape=size, strides=[s * flat.itemsize for s in stride], writeable=False)
    out = np.ascontiguousarray(view)
    out.flags.writeable = False
    return out


class PickledNamespace(dict):
    """Stand-in for ``argparse.Namespace`` (rosinality training checkpoints store ``args``): its attributes."""

    def __setstate__(self, state: Any) -> None:
        """Keeps the pickled attributes as items."""
        if isinstance(state, dict):
            self.update(state)


def _torch_globals(load: _Load) -> dict[str, Any]:
    """The allow-list for torch files: array builders bound to this load, element types, dict stand-ins."""

    def rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
        """torch._utils._rebuild_tensor / _v2: (storage, offset, size, stride[, requires_grad, hooks, meta])."""
        return _tensor(load, storage, storage_offset, size, stride)

    def rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *_):
        """torch._utils._rebuild_tensor_v3: a tensor that names its dtype (over an UntypedStorage)."""
        if not isinstance(dtype, Elem):
            raise CorruptData("_rebuild_tensor_v3 without a torch dtype")
        return _tensor(load, storage, storage_offset, size, stride, dtype)

    def rebuild_parameter(data, requires_grad, backward_hooks, *_state):
        """torch._utils._rebuild_parameter(_with_state): a Parameter is its data."""
        return data

    def load_from_bytes(b):
        """torch.storage._load_from_bytes: a storage saved as a nested torch.save stream."""
        if not isinstance(b, bytes):
            raise CorruptData("_load_from_bytes needs bytes")
        obj = _load_zip(io.BytesIO(b), load) if b.startswith(ZIP_MAGIC) else _load_legacy(b, load)
        if not isinstance(obj, (Storage, _StorageView)):
            raise CorruptData(f"_load_from_bytes gave a {type(obj).__name__}, not a storage")
        return obj

    table: dict[str, Any] = dict(NUMPY_GLOBALS)
    table.update({
        "collections.OrderedDict": PickledDict,
        "argparse.Namespace": PickledNamespace,
        "torch.Size": tuple,
        "torch._utils._rebuild_tensor": rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": rebuild_tensor,
        "torch._utils._rebuild_tensor_v3": rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": rebuild_parameter,
        "torch.storage._load_from_bytes": load_from_bytes,
        "torch.storage.UntypedStorage": _ELEMS["uint8"],
    })  # fmt: skip
    table.update({f"torch.{name}": _ELEMS[elem] for name, elem in _STORAGE_TYPES.items()})
    table.update({f"torch.{name}": _ELEMS[elem] for name, elem in _DTYPE_ALIASES.items()})
    return table


# Globals that mean "a pickled module, not weights": a better message than the generic refusal.
_WRONG_KIND = {
    "torch.nn.": "holds a pickled torch.nn module (torch.save(model)), not a state_dict; "
    f"re-save it with torch.save(model.state_dict(), path): {REFUSAL}",
    "__torch__.": f"is a TorchScript archive (torch.jit.save), not a torch.save state_dict: {REFUSAL}",
}


def torch_globals(path: str | os.PathLike) -> dict[str, Any]:
    """The allow-list for pickles that embed torch tensors (NVIDIA network pickles build on it).

    Maps ``torch._utils._rebuild_*``, ``torch.storage._load_from_bytes``, the storage and dtype names,
    ``collections.OrderedDict``, ``argparse.Namespace``, ``torch.Size`` and the numpy globals to our builders;
    errors name ``path``. Storages given as ``_load_from_bytes`` streams are read with their data.
    """
    return _torch_globals(_Load(Path(path), arrays=True))


def _unpickle(file: Any, load: _Load, persistent_load: Callable[[Any], Any] | None = None) -> Any:
    if not load.globals:
        load.globals = _torch_globals(load)
    return restricted_load(
        file, path=load.path, allowed=load.globals, persistent_load=persistent_load, wrong_kind=_WRONG_KIND
    )


def _elem_of(storage_type: Any) -> Elem:
    if not isinstance(storage_type, Elem):
        raise CorruptData(f"persistent id names {type(storage_type).__name__}, not a torch storage type")
    return storage_type


def _load_zip(file: Any, load: _Load) -> Any:
    """A zip-format torch.save stream (a path or a binary file object)."""
    try:
        zf = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise FileFormatError(load.path, f"truncated or corrupt zip archive ({one_line(e)})") from None
    with zf:
        records = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if not records:
            raise FileFormatError(load.path, "zip archive without <dir>/data.pkl: not a torch checkpoint")
        prefix = records[0][: -len("data.pkl")]
        names = set(zf.namelist())
        try:
            big_endian = prefix + "byteorder" in names and zf.read(prefix + "byteorder").strip() == b"big"
            storages: dict[str, Storage] = {}

            def persistent_load(pid: Any) -> Storage:
                if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
                    raise CorruptData(f"unexpected persistent id {str(pid)[:60]}")
                _, storage_type, key, _location, numel = pid
                key = str(key)
                if key not in storages:
                    storage = Storage(_elem_of(storage_type), int(numel))
                    if load.arrays:
                        storage.fill(zf.read(f"{prefix}data/{key}"), 0, storage.numel, big_endian)
                    storages[key] = storage
                return storages[key]

            return _unpickle(zf.read(records[0]), load, persistent_load)
        except (zipfile.BadZipFile, KeyError, OSError, EOFError) as e:
            raise FileFormatError(load.path, f"truncated or corrupt zip archive ({one_line(e)})") from None


def _load_legacy(buf: bytes, load: _Load) -> Any:
    """A legacy (non-zip) torch.save stream held in ``buf``."""
    f = io.BytesIO(buf)
    if _unpickle(f, load) != LEGACY_MAGIC:
        raise FileFormatError(load.path, "not a torch checkpoint (pickle without torch's magic number)")
    protocol = _unpickle(f, load)
    if protocol != LEGACY_PROTOCOL:
        raise FileFormatError(load.path, f"unsupported legacy torch protocol {protocol!r}")
    sys_info = _unpickle(f, load)
    big_endian = isinstance(sys_info, dict) and sys_info.get("little_endian") is False
    storages: dict[str, Storage] = {}

    def persistent_load(pid: Any) -> Storage | _StorageView:
        if isinstance(pid, tuple) and pid and pid[0] == "module":
            raise FileFormatError(load.path, f"holds a pickled torch module (persistent id 'module'): {REFUSAL}")
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise CorruptData(f"unexpected persistent id {str(pid)[:60]}")
        _, storage_type, root_key, _location, numel, view = pid
        root_key = str(root_key)
        if root_key not in storages:
            storages[root_key] = Storage(_elem_of(storage_type), int(numel))
        if view is None:
            return storages[root_key]
        _view_key, offset, view_numel = view
        return _StorageView(storages[root_key], int(offset), int(view_numel))

    start = f.tell()
    pending_before = load.pending
    obj = _unpickle(f, load, persistent_load)
    keys = _unpickle(f, load)
    if not isinstance(keys, list):
        raise FileFormatError(load.path, "truncated or corrupt pickle (legacy storage key list is not a list)")
    pos = f.tell()
    order = "big" if big_endian else "little"
    try:
        for key in keys:
            storage = storages[str(key)]
            if pos + 8 > len(buf):
                raise CorruptData("file ends inside the storage data")
            count = int.from_bytes(buf[pos : pos + 8], order, signed=True)
            pos += 8
            if load.arrays:
                storage.fill(buf, pos, count, big_endian)
            elif pos + count * storage.elem.disk.itemsize > len(buf):
                raise CorruptData("file ends inside the storage data")
            pos += count * storage.elem.disk.itemsize
    except (KeyError, CorruptData) as e:
        raise FileFormatError(load.path, f"truncated or corrupt legacy torch data ({one_line(e)})") from None
    if load.arrays and load.pending > pending_before:
        # Tensors were rebuilt before their storages' data (which follows the object): unpickle again.
        load.pending = pending_before
        f.seek(start)
        obj = _unpickle(f, load, persistent_load)
    return obj


def load_torch(path: str | os.PathLike, *, arrays: bool = True) -> Any:
    """Reads a ``torch.save`` file (zip or legacy format) without torch and without running code from it.

    Args:
      path: the ``.pt``/``.pth`` file.
      arrays: when False, read only the structure: tensors come back as :class:`TensorSpec` and no storage
        data is read (fast; used to recognise a checkpoint).

    Returns:
      The saved object with tensors as read-only numpy arrays and dicts/OrderedDicts as plain dicts.

    Raises:
      FileFormatError: missing, empty, truncated or corrupt file; not a torch file; a global outside the
        allow-list (code, a pickled ``nn.Module``). The message is one line starting with the path.
    """
    path = check_file(path)
    head = read_head(path)
    load = _Load(path, arrays)
    try:
        if head.startswith(ZIP_MAGIC):
            obj = _load_zip(path, load)
        elif is_pickle_head(head) and head[2:4] == b"\x8a\x0a":  # protocol 2, LONG1 of 10 bytes: the magic
            obj = _load_legacy(path.read_bytes(), load)
        elif is_pickle_head(head):
            raise FileFormatError(path, "is a plain pickle, not a torch.save file (an NVIDIA or TF network pickle?)")
        else:
            raise FileFormatError(path, f"not a torch/pickle checkpoint ({describe_head(head)})")
    except CorruptData as e:
        raise FileFormatError(path, f"truncated or corrupt torch file ({one_line(e)})") from None
    return plain(obj, path)

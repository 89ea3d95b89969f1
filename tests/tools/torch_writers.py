"""Write ``torch.save``-format files (zip and legacy) in pure Python, for reader tests; torch is not needed.

Globals such as ``torch._utils._rebuild_tensor_v2`` are written by name (:class:`Ref`) with a subclass of the
pure-Python pickler, so nothing has to be importable under that name. Usage::

    st = Storage(np.arange(12, dtype=np.float32))
    obj = {"w": Tensor(st, offset=2, shape=(2, 3), stride=(1, 2)), "b": tensor(np.ones(3, np.float16))}
    write_torch_zip(path, obj)        # or write_torch_legacy(path, obj)
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
SYS_INFO = {"protocol_version": LEGACY_PROTOCOL, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}

# numpy dtype -> torch storage class name.
STORAGE_NAMES = {
    "float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage", "int64": "LongStorage",
    "int32": "IntStorage", "int16": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage",
    "bool": "BoolStorage", "complex64": "ComplexFloatStorage", "complex128": "ComplexDoubleStorage",
}  # fmt: skip


class Ref:
    """A global written by name (``module.name``); instances are cached so the pickle memo reuses them."""

    _cache: dict[str, "Ref"] = {}

    def __new__(cls, dotted: str) -> "Ref":
        if dotted not in cls._cache:
            ref = super().__new__(cls)
            ref.module, ref.name = dotted.rsplit(".", 1)
            cls._cache[dotted] = ref
        return cls._cache[dotted]

    def __call__(self, *args: Any) -> Any:
        """Never called; pickle's save_reduce only requires the function to be callable."""
        raise TypeError(f"{self.module}.{self.name} is a name for pickles only")


class NewObj:
    """An object written as NEWOBJ of ``cls_name`` (no args), then SETITEMS of ``items``, then BUILD of ``state``."""

    def __init__(self, cls_name: str, items: dict | None = None, state: Any = None):
        self.cls, self.items, self.state = Ref(cls_name), items or {}, state


class RefPickler(pickle._Pickler):
    """The pure-Python pickler, taught to write :class:`Ref` and :class:`NewObj`."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_ref(self, ref: Ref) -> None:
        if self.proto >= 4:
            self.save(ref.module)
            self.save(ref.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{ref.module}\n{ref.name}\n".encode())
        self.memoize(ref)

    def save_newobj(self, obj: NewObj) -> None:
        self.save(obj.cls)
        self.save(())
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        if obj.items:
            self._batch_setitems(iter(obj.items.items()))
        if obj.state is not None:
            self.save(obj.state)
            self.write(pickle.BUILD)

    dispatch[Ref] = save_ref
    dispatch[NewObj] = save_newobj


def dumps(obj: Any, *, protocol: int, persistent_id: Callable[[Any], Any] | None = None) -> bytes:
    """Pickles ``obj`` with :class:`RefPickler`."""
    buf = io.BytesIO()
    pickler = RefPickler(buf, protocol=protocol)
    if persistent_id is not None:
        pickler.persistent_id = persistent_id
    pickler.dump(obj)
    return buf.getvalue()


class Storage:
    """A flat storage. ``data`` is 1-D; ``bfloat16=True`` means ``data`` is uint16 bfloat16 bit patterns."""

    def __init__(self, data: np.ndarray, *, bfloat16: bool = False, untyped: bool = False):
        self.data = np.ascontiguousarray(data).reshape(-1)
        self.bfloat16 = bfloat16
        self.untyped = untyped

    @property
    def type_name(self) -> str:
        """``torch.<X>Storage`` global of this storage."""
        if self.untyped:
            return "torch.UntypedStorage"
        return "torch." + ("BFloat16Storage" if self.bfloat16 else STORAGE_NAMES[self.data.dtype.name])

    @property
    def numel(self) -> int:
        """Element count as torch records it (bytes for an untyped storage)."""
        return self.data.nbytes if self.untyped else self.data.size

    def __reduce__(self):
        # Outside a torch.save stream (NVIDIA pickles) a storage pickles as a nested legacy stream.
        return Ref("torch.storage._load_from_bytes"), (legacy_bytes(self),)


class StorageSlice:
    """Part of a storage (``storage[offset:offset + numel]``), which legacy files record as ``view_metadata``."""

    def __init__(self, storage: Storage, offset: int, numel: int):
        self.storage, self.offset, self.numel = storage, offset, numel
        self.type_name = storage.type_name


class Tensor:
    """A tensor over a storage, pickled as ``torch._utils._rebuild_tensor_v2`` (or v3 with ``dtype``)."""

    def __init__(
        self,
        storage: Storage | StorageSlice,
        *,
        offset: int = 0,
        shape: tuple[int, ...],
        stride: tuple[int, ...] | None = None,
        parameter: bool = False,
        dtype: str | None = None,
    ):
        if stride is None:
            stride = tuple(int(np.prod(shape[i + 1 :])) for i in range(len(shape)))
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(shape), tuple(stride)
        self.parameter, self.dtype = parameter, dtype

    def __reduce__(self):
        hooks = collections.OrderedDict()
        if self.dtype is not None:  # a tensor over an UntypedStorage that names its dtype
            args = (self.storage, self.offset, self.shape, self.stride, False, hooks, Ref(f"torch.{self.dtype}"))
            inner = (Ref("torch._utils._rebuild_tensor_v3"), args)
        else:
            args = (self.storage, self.offset, self.shape, self.stride, False, hooks)
            inner = (Ref("torch._utils._rebuild_tensor_v2"), args)
        if not self.parameter:
            return inner
        plain = Tensor(self.storage, offset=self.offset, shape=self.shape, stride=self.stride, dtype=self.dtype)
        return Ref("torch._utils._rebuild_parameter"), (plain, True, collections.OrderedDict())


def tensor(array: np.ndarray, *, parameter: bool = False) -> Tensor:
    """A contiguous tensor with its own storage holding ``array``."""
    array = np.asarray(array)
    return Tensor(Storage(array), shape=array.shape, parameter=parameter)


def to_bfloat16_bits(array: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), truncating."""
    return (np.asarray(array, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _storage_id(storages: dict[int, tuple[str, Storage]]) -> Callable[[Any], Any]:
    def persistent_id(obj: Any) -> Any:
        if not isinstance(obj, Storage):
            return None
        if id(obj) not in storages:
            storages[id(obj)] = (str(len(storages)), obj)
        return storages[id(obj)][0], obj

    return persistent_id


def write_torch_zip(path: str | Path, obj: Any, *, prefix: str = "archive", byteorder: str = "little",
                    location: str = "cpu") -> None:
    """Writes ``obj`` as torch's zip format: ``<prefix>/data.pkl`` + ``<prefix>/data/<key>`` records.

    ``location`` is the device each storage was saved from (``"cuda:0"`` for a file written from GPU tensors)."""
    storages: dict[int, tuple[str, Storage]] = {}
    keyed = _storage_id(storages)

    def persistent_id(o: Any) -> Any:
        found = keyed(o)
        if found is None:
            return None
        key, st = found
        return ("storage", Ref(st.type_name), key, location, st.numel)

    data_pkl = dumps(obj, protocol=2, persistent_id=persistent_id)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", data_pkl)
        zf.writestr(f"{prefix}/byteorder", byteorder)
        for key, st in storages.values():
            data = st.data.astype(st.data.dtype.newbyteorder(">")) if byteorder == "big" else st.data
            zf.writestr(f"{prefix}/data/{key}", data.tobytes())
        zf.writestr(f"{prefix}/version", "3\n")


def legacy_bytes(obj: Any, *, sys_info: dict | None = None, location: str = "cpu") -> bytes:
    """``obj`` as a legacy (non-zip) ``torch.save`` stream; a Storage gives what ``_load_from_bytes`` reads.

    ``location`` is the device each storage was saved from (``"cuda:0"`` for a file written from GPU tensors)."""
    storages: dict[int, tuple[str, Storage]] = {}
    keyed = _storage_id(storages)

    def persistent_id(o: Any) -> Any:
        if isinstance(o, StorageSlice):
            root_key, root = keyed(o.storage)
            view = (f"{root_key}.{o.offset}", o.offset, o.numel)
            return ("storage", Ref(root.type_name), root_key, location, root.numel, view)
        found = keyed(o)
        if found is None:
            return None
        key, st = found
        return ("storage", Ref(st.type_name), key, location, st.numel, None)

    out = io.BytesIO()
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, sys_info or SYS_INFO):
        out.write(pickle.dumps(header, protocol=2))
    out.write(dumps(obj, protocol=2, persistent_id=persistent_id))
    out.write(pickle.dumps([key for key, _ in storages.values()], protocol=2))
    for _key, st in storages.values():
        out.write(np.int64(st.numel).tobytes())
        out.write(st.data.tobytes())
    return out.getvalue()


def write_torch_legacy(path: str | Path, obj: Any, *, location: str = "cpu") -> None:
    """Writes ``obj`` in the legacy (pre-1.6, ``_use_new_zipfile_serialization=False``) format."""
    Path(path).write_bytes(legacy_bytes(obj, location=location))

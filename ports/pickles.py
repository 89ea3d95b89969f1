"""Restricted unpickling: rebuild plain data and arrays, never run code that a file names.

A pickle is a small program. Its GLOBAL/STACK_GLOBAL opcodes import any callable, and REDUCE calls it:
``os.system`` or ``builtins.eval`` in a weight file would run when the file is loaded with ``pickle.load``.
This module's :class:`RestrictedUnpickler` resolves a global only through an explicit allow-list that maps the
dotted name to a small function of ours (an array builder, a ``dict`` stand-in); every other name, and every
persistent id nobody asked for, is refused with a one-line :class:`FileFormatError` naming the file. The
readers in ``ports.torch_files`` and ``ports.nvidia`` build their allow-lists on top of :data:`NUMPY_GLOBALS`.

Nothing in ``ports/`` calls ``pickle.load`` with the default unpickler.
"""

from __future__ import annotations

import io
import os
import pickle
import types
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np

from magec_jax.errors import FileFormatError

REFUSAL = "a weight file may only rebuild arrays"
ZIP_MAGIC = b"PK\x03\x04"
_MAX_DETAIL = 160


class PickledDict(dict):
    """Stand-in for the dict subclasses weight files name (``collections.OrderedDict``, ``dnnlib.util.EasyDict``).

    Their BUILD state (for a torch ``state_dict``, the ``_metadata`` attribute of module versions) is dropped;
    :func:`plain` turns these into plain dicts once loading is over.
    """

    def __setstate__(self, state: Any) -> None:
        """Ignores the pickled attributes."""


def plain(obj: Any, path: str | os.PathLike) -> Any:
    """Returns ``obj`` with stand-ins replaced at any depth in dicts, lists and tuples.

    :class:`PickledDict` becomes a plain dict, a pickled numpy array its (read-only) array, a pickled numpy
    dtype the dtype. ``path`` names the file in the error raised for an array that never got its data.
    """
    if isinstance(obj, _PendingArray):
        if not hasattr(obj, "array"):
            raise FileFormatError(path, "truncated or corrupt pickle (numpy array without data)")
        return obj.array
    if isinstance(obj, _DType):
        return obj.dtype
    if isinstance(obj, dict):
        return {k: plain(v, path) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v, path) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain(v, path) for v in obj)
    return obj


def one_line(err: BaseException) -> str:
    """An exception as ``Type: first line of message``, shortened, for a one-line error report."""
    text = str(err).strip().splitlines()
    detail = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    return detail if len(detail) <= _MAX_DETAIL else detail[: _MAX_DETAIL - 3] + "..."


def check_file(path: str | os.PathLike) -> Path:
    """Returns ``path`` as a Path if it is a non-empty regular file; else a :class:`FileFormatError`."""
    path = Path(path)
    if not path.exists():
        raise FileFormatError(path, "no such file")
    if path.is_dir():
        raise FileFormatError(path, "is a directory, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise FileFormatError(path, "empty file")
    return path


def read_head(path: Path, n: int = 16) -> bytes:
    """The first ``n`` bytes of a file."""
    with open(path, "rb") as f:
        return f.read(n)


def is_pickle_head(head: bytes) -> bool:
    """Whether bytes start like a binary pickle (PROTO opcode, protocol 2 to 5)."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def describe_head(head: bytes) -> str:
    """A short description of a non-checkpoint file's first bytes, for error messages."""
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip stream"
    for cut in range(4):  # the head may end inside a multi-byte character
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if text and all(c.isprintable() or c.isspace() for c in text):
            return "a text file"
        break
    return f"starts with {head[:8]!r}"


class _Sealed:
    """An allowed function as the unpickler hands it out: callable, but immune to the BUILD opcode.

    BUILD sets attributes on whatever object is on the stack; on a bare function it could set, say,
    ``__defaults__`` of one of our builders for every later load in the process.
    """

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[..., Any]):
        self._fn = fn

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __setstate__(self, state: Any) -> None:
        raise CorruptData("BUILD on an allowed function")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves globals only through ``allowed`` and persistent ids only via a callback.

    Args:
      file: binary file object positioned at the pickle.
      path: the file's name, for error messages.
      allowed: ``"module.name"`` -> the object to use for that global (our own functions and stand-ins).
      persistent_load: called with each persistent id; when None, a persistent id is refused.
      wrong_kind: ``"module prefix"`` -> problem text, for globals that mean "this is another kind of
        checkpoint" and deserve a better message than the generic refusal.
    """

    def __init__(
        self,
        file: BinaryIO,
        *,
        path: str | os.PathLike,
        allowed: Mapping[str, Any],
        persistent_load: Callable[[Any], Any] | None = None,
        wrong_kind: Mapping[str, str] | None = None,
    ):
        super().__init__(file)
        self._path = path
        self._allowed = allowed
        self._persistent = persistent_load
        self._wrong_kind = wrong_kind or {}

    def find_class(self, module: str, name: str) -> Any:
        """Returns the allowed stand-in for ``module.name``; refuses every other global."""
        dotted = f"{module}.{name}"
        if dotted in self._allowed:
            target = self._allowed[dotted]
            return _Sealed(target) if isinstance(target, types.FunctionType) else target
        for prefix, problem in self._wrong_kind.items():
            if dotted.startswith(prefix):
                raise FileFormatError(self._path, problem)
        raise FileFormatError(self._path, f"refuses global {dotted!r}: {REFUSAL}")

    def persistent_load(self, pid: Any) -> Any:
        """Resolves a persistent id with the callback given at construction, or refuses it."""
        if self._persistent is None:
            raise FileFormatError(self._path, f"refuses persistent id {str(pid)[:60]!r}: {REFUSAL}")
        return self._persistent(pid)


def restricted_load(
    file: BinaryIO | bytes,
    *,
    path: str | os.PathLike,
    allowed: Mapping[str, Any],
    persistent_load: Callable[[Any], Any] | None = None,
    wrong_kind: Mapping[str, str] | None = None,
) -> Any:
    """Unpickles one object with :class:`RestrictedUnpickler`; any failure is a one-line FileFormatError.

    ``file`` may be bytes or a binary file object (left just after the pickle's STOP opcode). Refusals keep
    their own message; everything else (EOF, bad opcodes, bad arguments to the allowed functions) becomes
    ``"truncated or corrupt pickle (...)"``.
    """
    if isinstance(file, (bytes, bytearray, memoryview)):
        file = io.BytesIO(file)
    unpickler = RestrictedUnpickler(
        file, path=path, allowed=allowed, persistent_load=persistent_load, wrong_kind=wrong_kind
    )
    try:
        return unpickler.load()
    except (FileFormatError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 -- any failure inside a corrupt pickle is reported as such
        raise FileFormatError(path, f"truncated or corrupt pickle ({one_line(e)})") from None


class CorruptData(ValueError):
    """Raised by the allowed builder functions on arguments no valid file contains."""


def _simple_dtype(dtype: np.dtype) -> np.dtype:
    """Accepts numeric, bool, bytes and str dtypes; refuses object, structured and sub-array dtypes."""
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise CorruptData(f"dtype {dtype} is not allowed in a weight file (object or structured)")
    return dtype


def _resolve_dtype(dtype: Any) -> np.dtype:
    if isinstance(dtype, _DType):
        return dtype.dtype
    if isinstance(dtype, (str, bytes)):
        return _simple_dtype(np.dtype(dtype.decode() if isinstance(dtype, bytes) else dtype))
    raise CorruptData(f"expected a dtype, got {type(dtype).__name__}")


class _DType:
    """A pickled ``numpy.dtype``: REDUCE ``numpy.dtype('f8', False, True)``, then BUILD with numpy's state tuple.

    numpy's own ``dtype.__setstate__`` trusts the flags in that tuple (flags 0x3f turn a ``V8`` dtype into one
    that holds object pointers), so it never sees file data: only the byte order is taken from the state.
    """

    __slots__ = ("dtype",)

    def __init__(self, spec: Any, align: bool = False, copy: bool = False):
        del align, copy  # both are False/True in every numpy pickle and mean nothing for simple dtypes
        self.dtype = _resolve_dtype(spec)

    def __setstate__(self, state: Any) -> None:
        """Applies the byte order of numpy's state ``(version, byteorder, None, None, None, elsize, align, flags)``."""
        if not isinstance(state, tuple) or len(state) < 5 or any(x is not None for x in state[2:5]):
            raise CorruptData("only simple numpy dtypes are allowed in a weight file")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])
        elif state[1] not in ("|", "="):
            raise CorruptData(f"bad dtype byte order {state[1]!r}")


class _PendingArray:
    """A pickled ``numpy.ndarray``: ``_reconstruct(ndarray, (0,), b'b')`` then BUILD with its raw bytes.

    :func:`plain` replaces it by the array. Only raw-byte (non-object) states are accepted; the result is a
    read-only native-byte-order array, a view of the pickled bytes where possible.
    """

    __slots__ = ("array",)

    def __setstate__(self, state: Any) -> None:
        """Builds the array from ``(version, shape, dtype, is_fortran, raw_bytes)``."""
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise CorruptData("bad numpy array state")
        shape, dtype, is_fortran, raw = state
        dtype = _resolve_dtype(dtype)
        if not isinstance(raw, (bytes, bytearray)):
            raise CorruptData("numpy array state without raw bytes")
        shape = tuple(int(n) for n in shape)
        self.array = _native(np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)))).reshape(
            shape, order="F" if is_fortran else "C"
        )


def _native(arr: np.ndarray) -> np.ndarray:
    """``arr`` in native byte order (a copy only when it is not), read-only."""
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr.flags.writeable = False
    return arr


def _np_scalar(dtype: Any, data: Any) -> np.generic:
    """``numpy.core.multiarray.scalar(dtype, raw_bytes)``: a numpy scalar such as a float64 gain."""
    dtype = _resolve_dtype(dtype)
    if not isinstance(data, bytes):
        raise CorruptData("numpy scalar without raw bytes")
    return _native(np.frombuffer(data, dtype=dtype, count=1))[0]


class _NdarrayType:
    """Stand-in for the ``numpy.ndarray`` global, which pickles pass only as ``_reconstruct``'s first argument."""

    __slots__ = ()


_NDARRAY = _NdarrayType()


def _np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> _PendingArray:
    """``numpy.core.multiarray._reconstruct``: a placeholder that the following BUILD fills."""
    del shape, dtype  # numpy always passes ((0,), b'b'); the real ones come with BUILD
    if subtype is not _NDARRAY:
        raise CorruptData("_reconstruct of something other than numpy.ndarray")
    return _PendingArray()


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """``numpy.core.numeric._frombuffer`` (numpy arrays pickled with protocol 5, in-band)."""
    if not isinstance(buf, (bytes, bytearray)) or order not in ("C", "F"):
        raise CorruptData("bad _frombuffer arguments")
    return _native(np.frombuffer(buf, dtype=_resolve_dtype(dtype))).reshape(tuple(shape), order=order)


def _numpy_globals() -> dict[str, Any]:
    table: dict[str, Any] = {"numpy.dtype": _DType, "numpy.ndarray": _NDARRAY}
    for core in ("numpy.core", "numpy._core"):  # numpy 1.x writes numpy.core, numpy 2.x numpy._core
        table[f"{core}.multiarray.scalar"] = _np_scalar
        table[f"{core}.multiarray._reconstruct"] = _np_reconstruct
        table[f"{core}.numeric._frombuffer"] = _np_frombuffer
    return table


NUMPY_GLOBALS: Mapping[str, Any] = _numpy_globals()
"""The numpy globals weight pickles use: dtypes, scalars and arrays, under both module spellings."""
